/* The tail-call table of the tc programs (only tc_nodeport.c uses it, so
 * only its object declares it). */
#ifndef PIER_TAIL_H
#define PIER_TAIL_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* The IPv6 halves of the tc programs, tail-called so that each family has a
 * BPF stack budget of its own. Pinned: the entries outlive the agent. */
#define PIER_TC_INGRESS6 0
#define PIER_TC_EGRESS6 1

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_tc_programs SEC(".maps");

#endif
