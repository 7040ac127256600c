/* IPv4 conntrack for the tc programs (traffic from outside). */
#ifndef PIER_CT4_H
#define PIER_CT4_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "pier_maps.h"
#include "lib/nat.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct pier_ct4_key);
	__type(value, struct pier_ct4_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_ct4_flows SEC(".maps");

static __always_inline int pier_ct4_expired(const struct pier_ct4_entry *e, __u8 proto, __u64 now,
					    const struct pier_config *cfg)
{
	return pier_ct_expired(e->last_seen_ns, e->closing, proto, now, cfg);
}

#endif
