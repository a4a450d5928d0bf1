#!/usr/bin/env python3
"""Counts the IPv4 packets and bytes (IP header included) on the loopback interface to or from the
given TCP/UDP ports, as a packet capture would: each packet once (its outgoing copy). Needs root
(AF_PACKET). Prints "ready", then on EOF of stdin one JSON line {port: {"packets", "bytes"}}."""
import json, select, socket, struct, sys

PACKET_OUTGOING = 4
ports = {int(p): {"packets": 0, "bytes": 0} for p in sys.argv[1:]}
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
# A large buffer: the capture sees all loopback traffic of a busy machine and must not drop ours.
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024 * 1024)
sock.bind(("lo", 0))
sock.setblocking(False)
print("ready", flush=True)
while True:
    readable, _, _ = select.select([sock, sys.stdin], [], [], 0.5)
    if sys.stdin in readable and not sys.stdin.readline():
        break
    if sock not in readable:
        continue
    while True:
        try:
            frame, addr = sock.recvfrom(65600)
        except BlockingIOError:
            break
        if addr[2] != PACKET_OUTGOING or len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        if ip[9] not in (6, 17) or len(ip) < ihl + 4:
            continue
        src, dst = struct.unpack("!HH", ip[ihl:ihl + 4])
        for p in (src, dst):
            if p in ports:
                ports[p]["packets"] += 1
                ports[p]["bytes"] += total
                break
stats = sock.getsockopt(263, 6, 8)  # SOL_PACKET, PACKET_STATISTICS: packets, drops
ports["dropped_by_capture"] = struct.unpack("II", stats)[1]
print(json.dumps(ports), flush=True)
