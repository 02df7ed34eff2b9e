"""A proxyless gRPC client: resolves TARGET through xDS (GRPC_XDS_BOOTSTRAP) and calls it every
INTERVAL_MS, COUNT times at most, printing one line per call: "ok <backend>" or "error <code>".

Usage: xds_client.py TARGET INTERVAL_MS COUNT
"""
import sys
import time

import grpc


def main():
    target, interval, count = sys.argv[1], int(sys.argv[2]) / 1000.0, int(sys.argv[3])
    with grpc.insecure_channel(target) as channel:
        who = channel.unary_unary("/causeway.test.Echo/Who")
        for _ in range(count):
            try:
                reply = who(b"", timeout=2, wait_for_ready=False)
                print("ok", reply.decode(), flush=True)
            except grpc.RpcError as error:
                print("error", error.code().name, error.details(), flush=True)
            time.sleep(interval)


if __name__ == "__main__":
    main()
