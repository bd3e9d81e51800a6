"""Records one real client/server conversation for the agent's unit tests.

usage: record.py LISTEN_PORT SERVER_PORT OUT_FILE

Accepts one connection on LISTEN_PORT, relays it to SERVER_PORT on
127.0.0.1, and writes every chunk relayed, in order, as a record: one byte
('C' client to server, 'S' server to client), a 4-byte big-endian length,
then the bytes. Used once by hand to make the .rec files here; the tests
replay them (see `agent/src/replay.rs`).
"""

import selectors
import socket
import struct
import sys

listen_port, server_port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", listen_port))
ls.listen(1)
client, _ = ls.accept()
server = socket.create_connection(("127.0.0.1", server_port))
sel = selectors.DefaultSelector()
sel.register(client, selectors.EVENT_READ, (b"C", server))
sel.register(server, selectors.EVENT_READ, (b"S", client))
with open(out, "wb") as f:
    open_ends = 2
    while open_ends:
        for key, _ in sel.select():
            tag, peer = key.data
            data = key.fileobj.recv(65536)
            if not data:
                sel.unregister(key.fileobj)
                open_ends -= 1
                try:
                    peer.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            f.write(tag + struct.pack("!I", len(data)) + data)
            peer.sendall(data)
