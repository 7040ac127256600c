/* IPv6 conntrack for the tc programs (see ct4.h). */
#ifndef PIER_CT6_H
#define PIER_CT6_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "pier_maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct pier_ct6_key);
	__type(value, struct pier_ct6_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_ct6_flows SEC(".maps");

#endif
