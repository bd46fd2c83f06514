/*
 * pyxen's network test guest (a PVH kernel): drives its vifs with netfront.c and answers
 * as a small host on the LAN would. Command line:
 *
 *   ip=A.B.C.D           its address on vif 0 (a vif's backend `ip` node wins: xl's ip=)
 *   peer=E.F.G.H count=N ping that address N times (ARP first) and report the replies
 *
 * It answers ARP requests for its address and ICMP echo requests to it, and, for the
 * benchmarks (bench/net.py), UDP: port 9 (discard) counts what it receives and answers
 * the payload "stats" with "rx_packets P rx_bytes B"; port 19 takes "blast N SIZE PORT
 * [A.B.C.D]" and sends N UDP datagrams of SIZE bytes to that port of the sender (or of
 * the address given), then replies "blast done N". It takes up vifs that are hot-plugged
 * (xl network-attach: a watch on device/vif) and lets go of those being removed, and
 * answers xl shutdown (PV control). Each event is one console line ("pyxen net: ...").
 */
#include "netfront.h"

static unsigned int domid;
static uint32_t xen_base;
static struct netfront nfs[NF_MAX];
static uint32_t cmdline_ip;

void exception_report(uint64_t *frame)
{
    printk("pyxen net: unexpected exception %lu (error %lx) at rip %lx cs %lx\n",
           frame[0], frame[1], frame[2], frame[3]);
    shutdown(SHUTDOWN_crash);
}

void ap_main(unsigned int id) { (void)id; for (;;) sched_op(SCHEDOP_block, NULL); }

/* `rep movsb`: one emulated instruction instead of a byte loop in ring 0 */
static inline void copy(void *d, const void *s, size_t n)
{
    asm volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) :: "memory");
}

static inline uint16_t htons(uint16_t v) { return (uint16_t)(v << 8 | v >> 8); }
#define ntohs htons

static uint32_t parse_ip(const char *s)
{
    uint32_t ip = 0;
    for (int i = 0; i < 4; i++) {
        unsigned int n = 0, digits = 0;
        while (*s >= '0' && *s <= '9') { n = n * 10 + (unsigned int)(*s++ - '0'); digits++; }
        if (!digits || n > 255 || (i < 3 && *s++ != '.')) return 0;
        ip |= n << (8 * i);  /* network order in memory */
    }
    return ip;
}

static void fmt_ip(uint32_t ip, char *out, size_t size)
{
    snprintf(out, size, "%u.%u.%u.%u", ip & 255, (ip >> 8) & 255, (ip >> 16) & 255, ip >> 24);
}

static uint16_t csum(const void *data, unsigned int len)
{
    const uint8_t *p = data;
    uint32_t s = 0;
    for (unsigned int i = 0; i + 1 < len; i += 2) s += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (len & 1) s += (uint32_t)(p[len - 1] << 8);
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return htons((uint16_t)~s);
}

struct eth { uint8_t dst[6], src[6]; uint16_t type; } __attribute__((packed));
struct arp {
    uint16_t htype, ptype; uint8_t hlen, plen; uint16_t op;
    uint8_t sha[6]; uint32_t spa; uint8_t tha[6]; uint32_t tpa;
} __attribute__((packed));
struct ip4 {
    uint8_t vhl, tos; uint16_t len, id, frag; uint8_t ttl, proto; uint16_t sum;
    uint32_t src, dst;
} __attribute__((packed));
struct icmp { uint8_t type, code; uint16_t sum, id, seq; } __attribute__((packed));
struct udp { uint16_t sport, dport, len, sum; } __attribute__((packed));

static uint8_t txbuf[1600];

/* --- a tiny ARP cache ---------------------------------------------------------------- */

static struct { uint32_t ip; uint8_t mac[6]; } arp_cache[8];

static void arp_learn(uint32_t ip, const uint8_t mac[6])
{
    unsigned int slot = 0;
    for (unsigned int i = 0; i < 8; i++) {
        if (arp_cache[i].ip == ip || !arp_cache[i].ip) { slot = i; break; }
        slot = (ip >> 24) & 7;
    }
    arp_cache[slot].ip = ip;
    copy(arp_cache[slot].mac, mac, 6);
}

static const uint8_t *arp_lookup(uint32_t ip)
{
    for (unsigned int i = 0; i < 8; i++)
        if (arp_cache[i].ip == ip) return arp_cache[i].mac;
    return NULL;
}

static void send_arp(struct netfront *nf, uint16_t op, const uint8_t *tha, uint32_t tpa)
{
    struct eth *e = (struct eth *)txbuf;
    struct arp *a = (struct arp *)(e + 1);
    static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    copy(e->dst, op == 1 ? bcast : tha, 6);
    copy(e->src, nf->mac, 6);
    e->type = htons(0x0806);
    a->htype = htons(1); a->ptype = htons(0x0800); a->hlen = 6; a->plen = 4;
    a->op = htons(op);
    copy(a->sha, nf->mac, 6);
    a->spa = nf->ip;
    if (op == 1) memset(a->tha, 0, 6); else copy(a->tha, tha, 6);
    a->tpa = tpa;
    netfront_send(nf, txbuf, sizeof(*e) + sizeof(*a), 1);
}

/* --- IPv4 out ------------------------------------------------------------------------ */

static unsigned int ip_header(struct netfront *nf, const uint8_t *dmac, uint32_t dst,
                              uint8_t proto, unsigned int payload)
{
    static uint16_t ip_id;
    struct eth *e = (struct eth *)txbuf;
    struct ip4 *ip = (struct ip4 *)(e + 1);
    copy(e->dst, dmac, 6);
    copy(e->src, nf->mac, 6);
    e->type = htons(0x0800);
    ip->vhl = 0x45; ip->tos = 0; ip->len = htons((uint16_t)(20 + payload));
    ip->id = htons(++ip_id); ip->frag = htons(0x4000); ip->ttl = 64; ip->proto = proto;
    ip->sum = 0; ip->src = nf->ip; ip->dst = dst;
    ip->sum = csum(ip, 20);
    return sizeof(*e) + 20;
}

static unsigned int udp_frame(struct netfront *nf, const uint8_t *dmac, uint32_t dst,
                              uint16_t sport, uint16_t dport, const void *data,
                              unsigned int len)
{
    unsigned int off = ip_header(nf, dmac, dst, 17, 8 + len);
    struct udp *u = (struct udp *)(txbuf + off);
    u->sport = htons(sport); u->dport = htons(dport);
    u->len = htons((uint16_t)(8 + len)); u->sum = 0;  /* optional over IPv4 */
    if (data) copy(u + 1, data, len);
    return off + 8 + len;
}

/* --- UDP services: discard + stats (9), blast (19) ----------------------------------- */

static unsigned long udp_rx_packets, udp_rx_bytes;
static struct {
    struct netfront *nf;
    unsigned long left, sent;
    unsigned int size;
    int prepared;
    uint32_t dst;
    uint16_t dport;
    uint32_t reply_ip;
    uint16_t reply_port;
    uint8_t reply_mac[6];
} blast;

static unsigned long parse_ul(const char **s)
{
    unsigned long n = 0;
    while (**s == ' ') (*s)++;
    while (**s >= '0' && **s <= '9') n = n * 10 + (unsigned long)(*(*s)++ - '0');
    return n;
}

static void udp_in(struct netfront *nf, struct eth *e, struct ip4 *ip, struct udp *u,
                   unsigned int len)
{
    char *data = (char *)(u + 1);
    unsigned int n = ntohs(u->len);
    if (n < 8 || n > len) return;
    n -= 8;
    uint16_t dport = ntohs(u->dport);
    if (dport == 9) {
        if (n == 5 && !strncmp(data, "stats", 5)) {
            char msg[80];
            snprintf(msg, sizeof(msg), "rx_packets %lu rx_bytes %lu", udp_rx_packets,
                     udp_rx_bytes);
            unsigned int fl = udp_frame(nf, e->src, ip->src, 9, ntohs(u->sport), msg,
                                        (unsigned int)strlen(msg));
            netfront_send(nf, txbuf, fl, 1);
            return;
        }
        udp_rx_packets++;
        udp_rx_bytes += n;
    } else if (dport == 19 && n > 6 && !strncmp(data, "blast ", 6) && !blast.nf) {
        char cmd[64];
        copy(cmd, data, n < 63 ? n : 63);
        cmd[n < 63 ? n : 63] = 0;
        const char *p = cmd + 6;
        blast.left = parse_ul(&p);
        blast.size = (unsigned int)parse_ul(&p);
        blast.dport = (uint16_t)parse_ul(&p);
        while (*p == ' ') p++;
        blast.dst = *p ? parse_ip(p) : ip->src;
        if (blast.size > 1472) blast.size = 1472;
        blast.sent = 0;
        blast.prepared = 0;
        blast.nf = nf;
        blast.reply_ip = ip->src;
        blast.reply_port = ntohs(u->sport);
        copy(blast.reply_mac, e->src, 6);
        if (blast.dst == ip->src) arp_learn(ip->src, e->src);
    }
}

/* --- frames in -------------------------------------------------------------------------- */

static unsigned long ping_replies;
static uint16_t ping_id = 0x7078;

static void frame_in(struct netfront *nf, uint8_t *frame, unsigned int len)
{
    if (len < sizeof(struct eth)) return;
    struct eth *e = (struct eth *)frame;
    if (e->type == htons(0x0806) && len >= sizeof(*e) + sizeof(struct arp)) {
        struct arp *a = (struct arp *)(e + 1);
        if (a->htype != htons(1) || a->ptype != htons(0x0800)) return;
        if (a->spa) arp_learn(a->spa, a->sha);
        if (a->op == htons(1) && nf->ip && a->tpa == nf->ip)
            send_arp(nf, 2, a->sha, a->spa);
        return;
    }
    if (e->type != htons(0x0800) || len < sizeof(*e) + 20) return;
    struct ip4 *ip = (struct ip4 *)(e + 1);
    unsigned int ihl = (ip->vhl & 15u) * 4, tot = ntohs(ip->len);
    if ((ip->vhl >> 4) != 4 || ihl < 20 || tot < ihl || sizeof(*e) + tot > len) return;
    if (!nf->ip || ip->dst != nf->ip) return;
    if (ip->frag & htons(0x3fff)) return;  /* no reassembly */
    uint8_t *l4 = (uint8_t *)ip + ihl;
    unsigned int l4len = tot - ihl;
    if (ip->proto == 1 && l4len >= sizeof(struct icmp)) {
        struct icmp *ic = (struct icmp *)l4;
        if (ic->type == 8 && l4len <= sizeof(txbuf) - 34) {
            arp_learn(ip->src, e->src);
            unsigned int off = ip_header(nf, e->src, ip->src, 1, l4len);
            struct icmp *r = (struct icmp *)(txbuf + off);
            copy(r, ic, l4len);
            r->type = 0;
            r->sum = 0;
            r->sum = csum(r, l4len);
            netfront_send(nf, txbuf, off + l4len, 1);
        } else if (ic->type == 0 && ic->id == htons(ping_id)) {
            ping_replies++;
        }
    } else if (ip->proto == 17 && l4len >= sizeof(struct udp)) {
        udp_in(nf, e, ip, (struct udp *)l4, l4len);
    }
}

/* --- the vifs: attach what appears, let go of what is removed -------------------------- */

static int nf_slot_free(void)
{
    for (int i = 0; i < NF_MAX; i++) if (!nfs[i].active) return i;
    return -1;
}

static void vif_scan(void)
{
    for (unsigned int devid = 0; devid < 8; devid++) {
        int known = 0;
        for (int i = 0; i < NF_MAX; i++)
            if (nfs[i].active && nfs[i].devid == devid) known = 1;
        if (known) continue;
        char path[48], state[8];
        snprintf(path, sizeof(path), "device/vif/%u/state", devid);
        if (xb_read(path, state, sizeof(state)) < 0 || state[0] != '1') continue;
        int slot = nf_slot_free();
        if (slot < 0) return;
        struct netfront *nf = &nfs[slot];
        int rc = netfront_attach(nf, (unsigned int)slot, devid);
        if (rc) {
            printk("pyxen net: vif %u: attach failed: %s\n", devid, xb_error_name(rc));
            continue;
        }
        char ipnode[16], ipbuf[24], bip[160];
        snprintf(bip, sizeof(bip), "%s/ip", nf->bpath);
        if (xb_read(bip, ipnode, sizeof(ipnode)) > 0) {
            for (char *q = ipnode; *q; q++) if (*q == ' ') { *q = 0; break; }
            nf->ip = parse_ip(ipnode);
        }
        if (!nf->ip && devid == 0) nf->ip = cmdline_ip;
        fmt_ip(nf->ip, ipbuf, sizeof(ipbuf));
        printk("pyxen net: vif %u connected: mac %02x:%02x:%02x:%02x:%02x:%02x ip %s\n",
               devid, nf->mac[0], nf->mac[1], nf->mac[2], nf->mac[3], nf->mac[4],
               nf->mac[5], nf->ip ? ipbuf : "none");
        if (nf->ip) send_arp(nf, 2, (const uint8_t *)"\xff\xff\xff\xff\xff\xff", nf->ip);
    }
}

static void vif_check_closing(void)
{
    for (int i = 0; i < NF_MAX; i++) {
        if (nfs[i].active && netfront_backend_closing(&nfs[i])) {
            netfront_close(&nfs[i]);
            printk("pyxen net: vif %u closed (rx %lu tx %lu packets)\n", nfs[i].devid,
                   nfs[i].rx_packets, nfs[i].tx_packets);
        }
    }
}

/* --- the main loop -------------------------------------------------------------------- */

static void poll_all(void)
{
    for (int i = 0; i < NF_MAX; i++) netfront_poll(&nfs[i], frame_in);
}

static void handle_xenstore(void)
{
    char path[128], token[32];
    int vifs = 0, closing = 0;
    while (xb_next_event(path, sizeof(path), token, sizeof(token))) {
        int reason = pv_control_event(token);
        if (reason >= 0) {
            printk("pyxen net: shutdown requested: %s\n", pv_control_name(reason));
            shutdown((unsigned int)reason);
        }
        if (streq(token, "vifs")) vifs = 1;
        if (streq(token, "netback")) closing = 1;
    }
    if (closing) vif_check_closing();
    if (vifs) vif_scan();
}

static void run_blast(void)
{
    struct netfront *nf = blast.nf;
    if (!nf || !nf->active) { blast.left = 0; blast.nf = NULL; return; }
    const uint8_t *mac = arp_lookup(blast.dst);
    if (!mac) {
        static uint64_t next_arp;
        if (pv_time_ns() >= next_arp) {
            send_arp(nf, 1, NULL, blast.dst);
            next_arp = pv_time_ns() + 200000000ull;
        }
        return;
    }
    unsigned int fl = udp_frame(nf, mac, blast.dst, 19, blast.dport, NULL, blast.size);
    if (!blast.prepared) {  /* every datagram is the same frame: written once per page */
        netfront_tx_prepare(nf, txbuf, fl);
        blast.prepared = 1;
    }
    unsigned int batch = 0;
    netfront_reap(nf);
    while (blast.left && !netfront_send_prepared(nf, fl)) {
        blast.left--;
        blast.sent++;
        if (++batch == 16) { netfront_flush(nf); batch = 0; netfront_reap(nf); }
    }
    netfront_flush(nf);
    if (!blast.left) {  /* once a TX page is free again (the loop retries until then) */
        char msg[48];
        snprintf(msg, sizeof(msg), "blast done %lu", blast.sent);
        unsigned int len = udp_frame(nf, blast.reply_mac, blast.reply_ip, 19,
                                     blast.reply_port, msg, (unsigned int)strlen(msg));
        if (!netfront_send(nf, txbuf, len, 1)) blast.nf = NULL;
    }
}

static void ping_peer(uint32_t peer, unsigned long count)
{
    char pbuf[24];
    fmt_ip(peer, pbuf, sizeof(pbuf));
    struct netfront *nf = &nfs[0];
    if (!nf->active || !nf->ip) { printk("pyxen net: ping %s: no vif 0\n", pbuf); return; }
    uint64_t deadline = pv_time_ns() + 30000000000ull, next = 0;
    unsigned long seq = 0;
    while (ping_replies < count && pv_time_ns() < deadline) {
        uint64_t now = pv_time_ns();
        if (now >= next) {
            const uint8_t *mac = arp_lookup(peer);
            if (!mac) {
                send_arp(nf, 1, NULL, peer);
            } else if (seq < count + 5) {
                unsigned int off = ip_header(nf, mac, peer, 1, sizeof(struct icmp) + 32);
                struct icmp *ic = (struct icmp *)(txbuf + off);
                ic->type = 8; ic->code = 0; ic->id = htons(ping_id);
                ic->seq = htons((uint16_t)++seq);
                memset(ic + 1, 'p', 32);
                ic->sum = 0;
                ic->sum = csum(ic, sizeof(*ic) + 32);
                netfront_send(nf, txbuf, off + sizeof(*ic) + 32, 1);
            }
            next = now + 300000000ull;
        }
        pv_wait_until(next);
        pv_ack();
        poll_all();
        handle_xenstore();
        poll_all();  /* xenbus requests clear the rings' pending bits too */
    }
    printk("pyxen net: ping %s: %lu/%lu replies\n", pbuf, ping_replies, count);
}

void kmain(uint32_t start_info_paddr)
{
    cpu_tables_init();
    asm volatile("lidt idt_ptr(%%rip)" ::: "memory");
    xen_base = find_xen_leaves();
    if (!xen_base) for (;;) asm volatile("cli; hlt");
    uint32_t a, b, c, d;
    cpuid(xen_base + 2, &a, &b, &c, &d);
    wrmsr(b, (uint64_t)hypercall_page);
    cpuid(xen_base + 4, &a, &b, &c, &d);
    domid = (a & XEN_HVM_CPUID_DOMID_PRESENT) ? c : ~0u;
    struct hvm_start_info *si = (struct hvm_start_info *)(uint64_t)start_info_paddr;
    cmdline_load(si->cmdline_paddr);
    printk("pyxen net: domain %u, command line \"%s\"\n", domid, cmdline);
    char buf[32];
    if (opt("ip", buf, sizeof(buf))) cmdline_ip = parse_ip(buf);

    long rc = xb_init();
    if (!rc) rc = nf_gnttab_init();
    if (!rc) rc = pv_control_init();
    if (!rc) rc = xb_watch("device/vif", "vifs");
    if (rc) {
        printk("pyxen net: xenbus/grant table set-up failed: %ld\n", rc);
        shutdown(SHUTDOWN_crash);
    }
    vif_scan();
    printk("pyxen net: ready\n");
    if (opt("peer", buf, sizeof(buf))) ping_peer(parse_ip(buf), opt_ul("count", 3));
    for (;;) {
        pv_ack();
        poll_all();
        handle_xenstore();
        poll_all();  /* xenbus requests clear the rings' pending bits: look again */
        if (blast.nf) {
            run_blast();
            pv_wait_until(pv_time_ns() + 1000000ull);
        } else if (!xb_events_queued()) {
            pv_wait();
        }
    }
}
