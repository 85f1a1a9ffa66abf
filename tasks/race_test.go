//go:build race

package tasks

// raceEnabled: the race detector is on; allocation counts then vary from run to run.
const raceEnabled = true
