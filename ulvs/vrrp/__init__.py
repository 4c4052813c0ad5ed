"""VRRPv3 (RFC 5798, IPv4): keep the virtual addresses on exactly one director of a pair.

Its parts, split sans-I/O (STYLE rules 1 and 2):

  ulvs.vrrp.packet    pure: the advertisement codec (encode the VRRP payload, decode a whole IPv4
                      packet as a raw IPPROTO 112 socket returns it into an ``Advert`` or a drop
                      reason), with ulvs's optional HMAC trailer for authenticated ulvs pairs
  ulvs.vrrp.fsm       pure: the state machine of one VRRP instance (RFC 5798 section 6.4) and
                      keepalived's sync groups.  Takes adverts, timer expiries and ``now``;
                      returns actions (send an advert, change state, send gratuitous ARP)

This package file imports nothing: importing one part does not import the other.
"""
