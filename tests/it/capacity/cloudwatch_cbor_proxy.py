#!/usr/bin/env python3
"""A protocol adapter in front of moto's CloudWatch, for the tests only.

The AWS SDK for Rust speaks CloudWatch's Smithy RPC v2 CBOR protocol
(POST /service/GraniteServiceVersion20100801/operation/<Op>, CBOR bodies);
moto's server speaks its Query and JSON protocols only (getmoto/moto#9195: no
CBOR support planned). This adapter decodes each CBOR request, sends it to
moto as the same operation in the JSON protocol (the signature headers passed
on: moto reads the region from them), and encodes moto's answer back as CBOR
against the operation's output shape. The data, the validation and the
errors are moto's; the CBOR codec is botocore's (installed with moto).

Usage: cloudwatch_cbor_proxy.py LISTEN_PORT MOTO_URL
"""

import datetime
import json
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import botocore.session
from botocore.parsers import RpcV2CBORParser
from botocore.serialize import RpcV2CBORSerializer

PREFIX = "/service/GraniteServiceVersion20100801/operation/"
MODEL = botocore.session.get_session().get_service_model("cloudwatch")
PARSER = RpcV2CBORParser()
SERIALIZER = RpcV2CBORSerializer()
PASSED_HEADERS = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token", "User-Agent")


def to_json(value):
    """CBOR-decoded values as the JSON protocol writes them."""
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def cbor_error(code, message):
    """An error body: a CBOR map of two text strings."""
    out = bytearray([0xA2])
    for text in ("__type", code, "message", message or ""):
        data = text.encode()
        if len(data) < 24:
            out.append(0x60 | len(data))
        elif len(data) < 256:
            out += bytes([0x78, len(data)])
        else:
            out += bytes([0x79]) + len(data).to_bytes(2, "big")
        out += data
    return bytes(out)


class Handler(BaseHTTPRequestHandler):
    moto = ""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.startswith(PREFIX):
            return self.reply(404, cbor_error("UnknownOperation", self.path))
        op = self.path[len(PREFIX):]
        params = {}
        if body:
            params = PARSER.parse_data_item(PARSER.get_peekable_stream_from_bytes(body))
        headers = {
            "X-Amz-Target": f"GraniteServiceVersion20100801.{op}",
            "Content-Type": "application/x-amz-json-1.0",
        }
        for h in PASSED_HEADERS:
            if self.headers.get(h):
                headers[h] = self.headers[h]
        req = urllib.request.Request(
            self.moto + "/", data=json.dumps(to_json(params)).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        answer = json.loads(raw or b"{}")
        if status != 200:
            code = str(answer.get("__type", "InternalFailure")).split("#")[-1]
            return self.reply(status, cbor_error(code, answer.get("message") or answer.get("Message")))
        out = bytearray()
        shape = MODEL.operation_model(op).output_shape
        if shape is not None:
            SERIALIZER._serialize_data_item(out, answer, shape)
        else:
            out += b"\xa0"
        self.reply(200, bytes(out))

    def reply(self, status, payload):
        self.send_response(status)
        self.send_header("smithy-protocol", "rpc-v2-cbor")
        self.send_header("Content-Type", "application/cbor")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main():
    port, Handler.moto = int(sys.argv[1]), sys.argv[2].rstrip("/")
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
