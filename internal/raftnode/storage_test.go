package raftnode

import (
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/taskworker/taskworker/internal/store"
)

// A write that failed because the process or the system ran out of descriptors is not a storage
// fault (a connection flood causes it, and a fault would hand leadership away); any other failure
// still is, also when a shortage came after it.
func TestRunningOutOfDescriptorsIsNotAStorageFault(t *testing.T) {
	probeErr := func(errno syscall.Errno) error {
		return fmt.Errorf("probe /data: %w", &os.PathError{Op: "open", Path: "/data/.taskworker-probe", Err: errno})
	}
	for _, tc := range []struct {
		name   string
		errs   map[string]error // by store.Op*
		faulty bool
	}{
		{"EMFILE", map[string]error{store.OpProbe: probeErr(syscall.EMFILE)}, false},
		{"ENFILE", map[string]error{store.OpProbe: probeErr(syscall.ENFILE)}, false},
		{"snapshot EMFILE", map[string]error{store.OpSnapshot: probeErr(syscall.EMFILE)}, false},
		{"ENOSPC", map[string]error{store.OpProbe: probeErr(syscall.ENOSPC)}, true},
		{"EIO", map[string]error{store.OpProbe: probeErr(syscall.EIO)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := &Node{storage: store.NewHealth()}
			for _, op := range []string{store.OpProbe, store.OpSnapshot} {
				if err, ok := tc.errs[op]; ok {
					n.storage.Record(op, err)
				}
			}
			if got := n.StorageFault() != ""; got != tc.faulty {
				t.Fatalf("StorageFault() = %q, want faulty %t", n.StorageFault(), tc.faulty)
			}
			// What is not a fault is a shortage, which the watchdog warns about and counts.
			if _, _, shortage := n.storageVerdict(); (shortage != "") == tc.faulty {
				t.Fatalf("shortage %q with faulty %t: want exactly one of them", shortage, tc.faulty)
			}
		})
	}
	// The probe records its shortage again every interval; an older real fault is still reported.
	n := &Node{storage: store.NewHealth()}
	n.storage.Record(store.OpSnapshot, probeErr(syscall.ENOSPC))
	n.storage.Record(store.OpProbe, probeErr(syscall.EMFILE))
	if n.StorageFault() == "" {
		t.Fatal("a disk-full snapshot failure older than the descriptor shortage was hidden")
	}
}
