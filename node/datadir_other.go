//go:build !unix

package node

// modesApply: elsewhere the permission bits Go reports are not what keeps other users out, so the
// data dir's modes are neither checked nor changed.
const modesApply = false

func setPrivateUmask() {}
