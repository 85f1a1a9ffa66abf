package limits

// fileLimit is 1024 on Windows, which has no descriptor limit of the Unix kind: the caps derived
// from it stay the conservative ones of a default Unix limit.
func fileLimit() uint64 { return 1024 }
