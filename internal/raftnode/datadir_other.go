//go:build !unix

package raftnode

// modesApply: elsewhere the permission bits Go reports are not what keeps other users out, so the
// data dir's modes are neither checked nor changed.
const modesApply = false

// SetPrivateUmask does nothing here: the umask is a Unix setting.
func SetPrivateUmask() {}
