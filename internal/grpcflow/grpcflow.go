// Package grpcflow fixes the HTTP/2 flow-control windows of meshfed's gRPC
// connections.
//
// Left to its defaults, gRPC-Go estimates the bandwidth-delay product of
// every connection: when data arrives and no estimate is under way it sends
// a window update and a PING, and times the PING's acknowledgement. On a
// connection that carries one small request and one small response at a
// time (a CSR and its SVID, a Workload API call) nearly every message
// starts a new estimate, so each call costs both ends an extra write, an
// extra read and their TLS records on top of the call itself; on loopback a
// node renewal made two writes and two reads at the server instead of one
// of each. The estimate only ever serves to grow the windows past 64 KiB
// for bulk transfers, which meshfed's APIs do not make: their messages are
// bounded (the signing API's at 1 MiB, the Workload API's at 64 KiB).
//
// A window set here turns the estimation off (gRPC does so whenever both
// windows are configured) and fixes both the stream's and the connection's
// window at that size. A window also bounds what a peer may send before the
// receiver reads it, so it should be the largest message the receiver
// accepts, or a small multiple of it.
package grpcflow

import "google.golang.org/grpc"

// SigningAPIWindow is the window of both ends of a connection to meshfed
// server's signing API: its largest request (1 MiB); its replies are SVIDs
// and the agents' watch updates.
const SigningAPIWindow = 1 << 20

// ServerOptions fixes a server's windows at window bytes; gRPC keeps
// HTTP/2's initial 65 535 for a smaller window (estimation stays off).
func ServerOptions(window int32) []grpc.ServerOption {
	return []grpc.ServerOption{grpc.InitialWindowSize(window), grpc.InitialConnWindowSize(window)}
}

// DialOptions fixes a client connection's windows at window bytes, as
// ServerOptions does a server's.
func DialOptions(window int32) []grpc.DialOption {
	return []grpc.DialOption{grpc.WithInitialWindowSize(window), grpc.WithInitialConnWindowSize(window)}
}
