"""Header layouts, declared once as precompiled structs (network byte order).

Field widths are written beside each layout; offsets are relative to the header start.
"""

import struct

# Ethernet II: dst MAC (6) | src MAC (6) | ethertype (2)
ETH = struct.Struct("!6s6sH")
ETH_LEN = 14
# 802.1Q tag after the MAC addresses: TCI (2: PCP 3, DEI 1, VID 12) | inner ethertype (2)
VLAN = struct.Struct("!HH")
VLAN_LEN = 4
ETHERTYPE = struct.Struct("!H")

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_IPV6 = 0x86DD

# IPv4 (RFC 791): ver/ihl (1) | tos (1) | total length (2) | id (2) | flags/frag offset (2) |
# ttl (1) | protocol (1) | header checksum (2) | saddr (4) | daddr (4)
IP4 = struct.Struct("!BBHHHBBH4s4s")
IP4_LEN = 20
IP_MF = 0x2000
IP_DF = 0x4000
IP_OFFMASK = 0x1FFF

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17

# TCP (RFC 9293): sport (2) | dport (2) | seq (4) | ack (4) | data offset/reserved (1) | flags (1) |
# window (2) | checksum (2) | urgent pointer (2)
TCP = struct.Struct("!HHIIBBHHH")
TCP_LEN = 20
TCP_CSUM_OFF = 16
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_PSH = 0x08
TH_ACK = 0x10

# UDP (RFC 768): sport (2) | dport (2) | length (2) | checksum (2)
UDP = struct.Struct("!HHHH")
UDP_LEN = 8
UDP_CSUM_OFF = 6

# ICMP (RFC 792): type (1) | code (1) | checksum (2) | rest of header (4)
ICMP = struct.Struct("!BBH4s")
ICMP_LEN = 8
ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_ECHO = 8
ICMP_TIME_EXCEEDED = 11
ICMP_FRAG_NEEDED = 4  # code of DEST_UNREACH
ICMP_PORT_UNREACH = 3  # code of DEST_UNREACH
# ICMP errors that concern a connection (ip_vs_core.c:ip_vs_in_icmp).
ICMP_RELATED = frozenset({ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_TIME_EXCEEDED})

# ARP over Ethernet/IPv4 (RFC 826): htype (2) | ptype (2) | hlen (1) | plen (1) | op (2) |
# sha (6) | spa (4) | tha (6) | tpa (4)
ARP = struct.Struct("!HHBBH6s4s6s4s")
ARP_LEN = 28

# The fast path reads, in one call at the IPv4 header, everything it needs from an untagged
# IHL=5 TCP or UDP packet: ver/ihl, total length, flags/frag offset, ttl, protocol, IP checksum,
# the 12 contiguous bytes saddr|daddr|sport|dport (the connection key), the UDP checksum (L4+6),
# the TCP flags (L4+13) and the TCP checksum (L4+16).  38 bytes.
FAST4 = struct.Struct("!BxHxxHBBH12s2xH4xxB2xH")
FAST4_MIN_FRAME = ETH_LEN + FAST4.size  # 52
U16 = struct.Struct("!H")
BBH = struct.Struct("!BBH")
