package fastpath

// The programs are compiled from bpf/fastpath.c with clang and committed
// (fastpath_bpfel.o, fastpath_bpfeb.o and their Go files), so that a plain
// go build needs no C compiler; make bpf runs this again and make
// check-bpf (part of make lint) fails when they differ from the source.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I${BPF_ARCH_INCLUDE}" -target bpfel,bpfeb -type endpoint -type pool -type lpm4_key -type lpm6_key -type device -type port_key -type vxlan_config -type fdb_key fastpath bpf/fastpath.c
