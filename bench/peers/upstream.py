"""A tiny HTTP/1.1 keep-alive echo server on raw asyncio (no http.server): the
upstream of the Ember HTTP runner case, and that case's direct baseline.

POST /invoke answers the request body; GET /health answers {"status":"ok"}.
Listens on 127.0.0.1:$PORT.
"""
import asyncio
import os

HEALTH = b'{"status":"ok"}'


def response(status, body):
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        len(body),
        body,
    )


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                break
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            method, path = head.split(b" ", 2)[:2]
            if path == b"/health":
                out.append(response(b"200 OK", HEALTH))
            elif method == b"POST":
                out.append(response(b"200 OK", body))
            else:
                out.append(response(b"404 Not Found", b'{"error":"not found"}'))
        if out:
            self.transport.write(b"".join(out))


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", int(os.environ.get("PORT", "8081")))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
