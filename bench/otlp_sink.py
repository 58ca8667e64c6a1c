#!/usr/bin/env python3
"""A minimal OTLP/gRPC trace receiver for bench/run's scenario 2 with
tracing on (issue 19): counts the spans it receives and prints the count to
the file given on SIGTERM. Stubs: <build>/python (generated from
proto/opentelemetry by tests/interop/CMakeLists.txt).
usage: otlp_sink.py PORT COUNT_FILE"""
import signal
import sys
import threading
from concurrent import futures

import grpc

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp, trace_service_pb2_grpc as otlp_grpc


class Sink(otlp_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = 0
        self.requests = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self.lock:
            self.spans += n
            self.requests += 1
        return otlp.ExportTraceServiceResponse()


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    sink = Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    otlp_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    server.stop(0)
    with open(out, "w") as f:
        f.write(f"spans\t{sink.spans}\nrequests\t{sink.requests}\n")


if __name__ == "__main__":
    main()
