/* tc programs on the node's external interfaces: NodePorts, LoadBalancer IPs
 * and externalIPs reached from outside (lib/nat4.h, lib/nat6.h). Each
 * family has a program of its own: the IPv4 ones below tail-call the IPv6
 * halves, so each has the whole BPF stack to itself.
 *
 * Stack budget: the kernel gives a program 512 bytes of stack (a noinline
 * callee's frame counts on top of its caller's, each rounded up to 32). The
 * build fails when a function here needs more than 384 (build.rs,
 * -Wframe-larger-than=384; the message gives the size), which keeps room for
 * NetworkPolicy. Anything large (the ICMP errors built in place) lives in
 * per-CPU scratch maps instead, and a new flow's translation is written into
 * the caller's entry, shared with the known-flow path. At this writing the
 * IPv4 ingress program uses 272 bytes and the IPv6 one 384 (+32 for
 * packet_too_big6): IPv6 code that needs more stack must make room first. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "pier_maps.h"
#include "lib/nat.h"
#include "lib/nat4.h"
#include "lib/nat6.h"
#include "lib/tail.h"

SEC("classifier")
int pier_nodeport_ingress(struct __sk_buff *skb)
{
	const struct pier_config *cfg = pier_config_get();

	if (!cfg)
		return TC_ACT_OK;
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		bpf_tail_call(skb, &pier_tc_programs, PIER_TC_INGRESS6);
		pier_count(PIER_PASS_NO_IPV6); /* no IPv6 program loaded */
		return TC_ACT_OK;
	}
	return pier_ingress4(skb, cfg, bpf_ktime_get_ns());
}

SEC("classifier")
int pier_nodeport_egress(struct __sk_buff *skb)
{
	const struct pier_config *cfg = pier_config_get();

	if (!cfg)
		return TC_ACT_OK;
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		bpf_tail_call(skb, &pier_tc_programs, PIER_TC_EGRESS6);
		pier_count(PIER_PASS_NO_IPV6);
		return TC_ACT_OK;
	}
	return pier_egress4(skb, cfg, bpf_ktime_get_ns());
}

/* The IPv6 programs, reached by tail call from the two above. */
SEC("classifier")
int pier_nodeport_ingress6(struct __sk_buff *skb)
{
	const struct pier_config *cfg = pier_config_get();

	return cfg ? pier_ingress6(skb, cfg, bpf_ktime_get_ns()) : TC_ACT_OK;
}

SEC("classifier")
int pier_nodeport_egress6(struct __sk_buff *skb)
{
	const struct pier_config *cfg = pier_config_get();

	return cfg ? pier_egress6(skb, cfg, bpf_ktime_get_ns()) : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
