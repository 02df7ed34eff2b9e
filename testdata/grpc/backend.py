"""A gRPC backend for the proxyless test: answers /causeway.test.Echo/Who with its name.

Usage: backend.py ADDRESS NAME   (prints "ready" once serving; exits on SIGTERM or stdin EOF)
"""
import sys
from concurrent import futures

import grpc


def main():
    address, name = sys.argv[1], sys.argv[2].encode()

    def who(request, context):
        return name

    handler = grpc.method_handlers_generic_handler(
        "causeway.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(address) == 0:
        sys.exit(f"cannot listen on {address}")
    server.start()
    print("ready", flush=True)
    # The test closes our stdin to stop us, so nothing outlives it.
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
