package fsm

// The nodes table: every node that ever registered, by name. Register, node_down and drain
// (fsm.go) change it.
func init() {
	registerTable(Table[[]Node]{
		Name: "nodes",
		Pos:  20,
		Capture: func(f *FSM) ([]Node, bool) {
			ns := make([]Node, 0, len(f.nodes)) // never nil: every snapshot has the section
			for _, name := range sortedKeys(f.nodes) {
				ns = append(ns, f.nodes[name].clone())
			}
			return ns, true
		},
		Install: func(f *FSM, s *[]Node) { f.nodes = byName(s, func(n *Node) string { return n.Name }) },
		Digest: func(f *FSM, put func(any)) {
			put("nodes")
			for _, name := range sortedKeys(f.nodes) {
				put(name)
				put(f.nodes[name])
			}
		},
	})
}
