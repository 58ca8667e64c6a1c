// Command orgmesh-bench-grpcgo is the reference server of bench/run's
// scenario 7: grpc-go's own grpc.health.v1 Health/Check (an empty RPC: one
// map lookup under a mutex) on a plain-text listener, built offline against
// Debian's golang-google-grpc-dev (see build.sh). It prints "ready <addr>"
// once listening and serves until SIGTERM or SIGINT.
//
//	orgmesh-bench-grpcgo 127.0.0.1:port
package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: orgmesh-bench-grpcgo HOST:PORT")
		os.Exit(2)
	}
	lis, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "orgmesh-bench-grpcgo:", err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		srv.Stop()
	}()
	fmt.Println("ready", lis.Addr().String())
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, "orgmesh-bench-grpcgo:", err)
		os.Exit(1)
	}
}
