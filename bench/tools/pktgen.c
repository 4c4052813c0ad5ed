/* pktgen: a paced AF_PACKET frame generator for bench/bench_netns.py.
 *
 * trafgen paces with per-packet sleeps (about 115 kpps at most here) or sends a second's worth
 * of frames in one burst (-b), so neither gives a steady offered rate in the 100 kpps - 1 Mpps
 * range a sweep needs.  This sends batches with sendmmsg(2) on a packet socket that bypasses
 * the qdisc, and paces them against CLOCK_MONOTONIC by spinning: a batch leaves when its first
 * frame is due, and batches are small enough (rate / 20,000 frames, 1..64) that the director
 * never sees a burst longer than ~50 us.
 *
 * Frames (no FCS; 64 bytes on the wire with it):
 *   udp  60 B: eth | ipv4 | udp | 18 x 'A'; source port cycles over FLOWS ports from 1024
 *        (with more than 60,000 flows: an odd number of ports and two source addresses,
 *        alternating, so the (address, port) pairs repeat only after FLOWS frames); UDP
 *        checksum 0 (none, RFC 768).
 *   syn  54 B: eth | ipv4 | tcp SYN; source 10.77.T.(1..254) and ports 1024..65534, both
 *        cycling (coprime periods: 16 M distinct tuples), T given with -T; random sequence.
 *
 * usage: pktgen -i IF -m udp|syn -d DSTMAC -s SRCIP -D DSTIP -p DPORT [-f FLOWS] [-r PPS]
 *               [-t SECONDS] [-T THIRD_OCTET]
 *   -r 0 (default) = as fast as possible.  Runs -t seconds (default 10) or until SIGINT/SIGTERM,
 *   then prints "sent N" on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXBATCH 64
#define UDP_LEN 60
#define SYN_LEN 54

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t s) {
    for (size_t i = 0; i + 1 < n; i += 2) s += (uint32_t)p[i] << 8 | p[i + 1];
    if (n & 1) s += (uint32_t)p[n - 1] << 8;
    return s;
}

static uint16_t fold(uint32_t s) {
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }

static void ip_header(uint8_t *ip, int total, int proto, uint32_t sa, uint32_t da) {
    memset(ip, 0, 20);
    ip[0] = 0x45;
    put16(ip + 2, total);
    ip[6] = 0x40;                      /* DF */
    ip[8] = 64;
    ip[9] = proto;
    memcpy(ip + 12, &sa, 4);
    memcpy(ip + 16, &da, 4);
    put16(ip + 10, fold(sum16(ip, 20, 0)));
}

static int parse_mac(const char *s, uint8_t *mac) {
    unsigned v[6];
    if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) return -1;
    for (int i = 0; i < 6; i++) mac[i] = v[i];
    return 0;
}

static void die(const char *what) { perror(what); exit(2); }

int main(int argc, char **argv) {
    const char *ifname = NULL, *mode = "udp", *dmac_s = NULL, *src_s = NULL, *dst_s = NULL;
    long flows = 1, dport = 9, third = 100;
    double rate = 0, seconds = 10;
    int opt;
    while ((opt = getopt(argc, argv, "i:m:d:s:D:p:f:r:t:T:")) != -1) {
        switch (opt) {
        case 'i': ifname = optarg; break;
        case 'm': mode = optarg; break;
        case 'd': dmac_s = optarg; break;
        case 's': src_s = optarg; break;
        case 'D': dst_s = optarg; break;
        case 'p': dport = atol(optarg); break;
        case 'f': flows = atol(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'T': third = atol(optarg); break;
        default: goto usage;
        }
    }
    int syn = strcmp(mode, "syn") == 0;
    uint8_t dmac[6], smac[6];
    struct in_addr src, dst;
    if (!ifname || !dmac_s || !dst_s || (!syn && !src_s) || (!syn && strcmp(mode, "udp"))
        || parse_mac(dmac_s, dmac) || !inet_aton(dst_s, &dst) || (!syn && !inet_aton(src_s, &src))
        || flows < 1 || dport < 1 || dport > 65535 || rate < 0 || seconds <= 0 || third < 0 || third > 255)
        goto usage;

    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) die("socket(AF_PACKET)");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) die(ifname);
    memcpy(smac, ifr.ifr_hwaddr.sa_data, 6);
    int one = 1;
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);   /* best effort */
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = if_nametoindex(ifname);
    sll.sll_protocol = htons(ETH_P_IP);
    if (!sll.sll_ifindex) die(ifname);
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) die("bind");

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    static uint8_t frames[MAXBATCH][UDP_LEN];
    struct mmsghdr msgs[MAXBATCH];
    struct iovec iov[MAXBATCH];
    memset(msgs, 0, sizeof msgs);
    int flen = syn ? SYN_LEN : UDP_LEN;
    for (int k = 0; k < MAXBATCH; k++) {
        iov[k].iov_base = frames[k];
        iov[k].iov_len = flen;
        msgs[k].msg_hdr.msg_iov = &iov[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
    }

    /* flow cycling (see the header comment) */
    long ports = flows, addrs = 1;
    if (!syn && flows > 60000) {
        ports = flows / 2 + (1 - (flows / 2) % 2);
        addrs = 2;
    }
    uint32_t sa_base = syn ? htonl(0x0a4d0000u | (uint32_t)third << 8) : src.s_addr;
    uint64_t rnd = 0x9e3779b97f4a7c15ull ^ (uint64_t)time(NULL);

    int batch = rate > 0 ? (int)(rate / 20000) : MAXBATCH;
    if (batch < 1) batch = 1;
    if (batch > MAXBATCH) batch = MAXBATCH;
    uint64_t sent = 0, i = 0;
    double t0 = now(), end = t0 + seconds;
    while (!stop) {
        double t = now();
        if (t >= end) break;
        if (rate > 0 && t < t0 + sent / rate) continue;         /* spin until the batch is due */
        for (int k = 0; k < batch; k++, i++) {
            uint8_t *f = frames[k];
            memcpy(f, dmac, 6);
            memcpy(f + 6, smac, 6);
            f[12] = 0x08; f[13] = 0x00;
            uint8_t *ip = f + 14, *l4 = f + 34;
            if (syn) {
                uint32_t sa = htonl(ntohl(sa_base) | (uint32_t)(1 + i % 254));
                ip_header(ip, 40, 6, sa, dst.s_addr);
                memset(l4, 0, 20);
                put16(l4, (uint16_t)(1024 + i % 64511));
                put16(l4 + 2, (uint16_t)dport);
                rnd ^= rnd << 13; rnd ^= rnd >> 7; rnd ^= rnd << 17;
                uint32_t seq = (uint32_t)rnd;
                memcpy(l4 + 4, &seq, 4);
                l4[12] = 0x50;
                l4[13] = 0x02;                 /* SYN */
                put16(l4 + 14, 65535);
                uint32_t s = sum16(ip + 12, 8, 0) + 6 + 20;
                put16(l4 + 16, fold(sum16(l4, 20, s)));
            } else {
                uint32_t sa = src.s_addr;
                if (addrs > 1) sa = htonl(ntohl(sa_base) + (uint32_t)(i % 2));
                ip_header(ip, 46, 17, sa, dst.s_addr);
                put16(l4, (uint16_t)(1024 + i % ports));
                put16(l4 + 2, (uint16_t)dport);
                put16(l4 + 4, 26);
                put16(l4 + 6, 0);
                memset(l4 + 8, 'A', 18);
            }
        }
        int n = sendmmsg(fd, msgs, batch, 0);
        if (n < 0) {
            if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) { i -= batch; continue; }
            die("sendmmsg");
        }
        i -= batch - n;                        /* unsent frames are regenerated next time */
        sent += n;
    }
    printf("sent %llu\n", (unsigned long long)sent);
    return 0;
usage:
    fprintf(stderr, "usage: pktgen -i IF -m udp|syn -d DSTMAC [-s SRCIP] -D DSTIP -p DPORT [-f FLOWS] "
                    "[-r PPS] [-t SECONDS] [-T THIRD_OCTET]\n");
    return 2;
}
