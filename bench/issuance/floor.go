package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/server"
	"github.com/meshfed/meshfed/internal/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// floorCmd serves, in a process of its own, the least a signing API on
// grpc-go can be: Node.SignX509SVID on meshfed server's transport (its TLS
// policy, the caller's SVID verified at the handshake as the server
// verifies it, server.SigningTransportOptions at the default stream limit)
// whose handler does the ceiling's work and nothing else: parse the CSR,
// sign it with the server's own CA for the caller's SPIFFE ID, answer with
// the chain. There is no credential check besides the handshake's, no node
// record, no audit row, no log line and no metrics.
//
// `issuance load -addr FLOOR -attest-addr SERVER -api node -server-pid
// FLOOR_PID -ceiling-ca-dir DIR` measures it as it measures the server. Its
// share of the ceiling per core is the most a server built this way can
// reach on the machine before the work meshfed adds: the caller's
// credential and node record, the committed audit row, the log and the
// metrics. It is a measuring instrument, never a server to run.
//
// It prints "floor listen=ADDR pid=PID" once serving and runs until
// SIGTERM or SIGINT.
func floorCmd(args []string) error {
	fs := flag.NewFlagSet("floor", flag.ExitOnError)
	caDir := fs.String("ca-dir", "", "the server's CA directory (DATA_DIR/ca): the CA that signs, and whose roots verify callers")
	listen := fs.String("listen", "127.0.0.1:0", "where to serve")
	procs := fs.Int("gomaxprocs", 0, "GOMAXPROCS (0: the runtime's, or the GOMAXPROCS environment variable)")
	transportOnly := fs.Bool("transport-only", false, "answer every call with one SVID signed at start, after parsing its CSR: the transport alone, without the ceiling's work")
	fs.Parse(args)
	if *caDir == "" {
		return errors.New("floor: give -ca-dir")
	}
	if *procs > 0 {
		runtime.GOMAXPROCS(*procs)
	}
	ca, err := cadir.Load(*caDir, time.Now)
	if err != nil {
		return err
	}
	td, ok := ca.TrustDomain()
	if !ok {
		return errors.New("floor: the CA names no trust domain")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(ln.Addr().String())
	if err != nil {
		return err
	}
	cert, err := floorCertificate(ca, td, net.ParseIP(host))
	if err != nil {
		return err
	}
	bundle := x509bundle.NewSet(x509bundle.FromX509Authorities(td, ca.Roots()))
	conf := &tls.Config{
		MinVersion:   tlspolicy.MinVersion,
		CipherSuites: tlspolicy.CipherSuites(),
		ClientAuth:   tls.RequireAnyClientCert,
		Certificates: []tls.Certificate{cert},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, _, err := pki.VerifyX509SVID(cs.PeerCertificates, bundle, time.Now())
			return err
		},
		NextProtos: []string{"h2"},
	}
	g := grpc.NewServer(append(server.SigningTransportOptions(server.DefaultMaxStreamsPerConnection),
		grpc.Creds(credentials.NewTLS(conf)))...)
	node := &floorNode{ca: ca}
	if *transportOnly {
		c, err := floorCertificate(ca, td, net.ParseIP(host))
		if err != nil {
			return err
		}
		node.canned = svidResponse(spiffeid.RequireFromURI(c.Leaf.URIs[0]), c.Leaf.NotAfter, c.Certificate)
	}
	pb.RegisterNodeServer(g, node)

	done := make(chan error, 1)
	go func() { done <- g.Serve(ln) }()
	fmt.Printf("floor listen=%s pid=%d\n", ln.Addr(), os.Getpid())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-stop:
		g.Stop()
		return nil
	case err := <-done:
		return err
	}
}

// floorCertificate is the floor's serving certificate: an SVID of the CA's
// trust domain with ip as its IP SAN, as meshfed server's own is, so that
// the load verifies it as it verifies the server.
func floorCertificate(ca *pki.CA, td spiffeid.TrustDomain, ip net.IP) (tls.Certificate, error) {
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		return tls.Certificate{}, err
	}
	id, err := spiffeid.FromPath(td, "/bench/floor")
	if err != nil {
		return tls.Certificate{}, err
	}
	chain, err := ca.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: key.Public(), TTL: time.Hour, IPAddresses: []net.IP{ip}})
	if err != nil {
		return tls.Certificate{}, err
	}
	cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

// floorNode answers SignX509SVID with the ceiling's work for the caller's
// own SPIFFE ID; every other call is Unimplemented.
type floorNode struct {
	pb.UnimplementedNodeServer
	ca     *pki.CA
	canned *pb.SignX509SVIDResponse // -transport-only: the answer to every call
}

func (f *floorNode) SignX509SVID(ctx context.Context, req *pb.SignX509SVIDRequest) (*pb.SignX509SVIDResponse, error) {
	p, _ := peer.FromContext(ctx)
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 || len(ti.State.PeerCertificates[0].URIs) != 1 {
		return nil, status.Error(codes.Unauthenticated, "floor: no caller SVID")
	}
	id, err := spiffeid.FromURI(ti.State.PeerCertificates[0].URIs[0])
	if err != nil || len(req.GetRequests()) != 1 {
		return nil, status.Error(codes.InvalidArgument, "floor: one request from an SVID")
	}
	csr, err := x509.ParseCertificateRequest(req.GetRequests()[0].GetCsr())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if f.canned != nil { // the CSR parsed, as the server parses it; nothing signed
		return f.canned, nil
	}
	chain, err := f.ca.SignX509SVIDFromCSR(csr, pki.SVIDRequest{ID: id})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	der := make([][]byte, len(chain))
	for i, c := range chain {
		der[i] = c.Raw
	}
	return svidResponse(id, chain[0].NotAfter, der), nil
}

// svidResponse is SignX509SVID's answer for one SVID, as the server builds it.
func svidResponse(id spiffeid.ID, notAfter time.Time, chain [][]byte) *pb.SignX509SVIDResponse {
	return &pb.SignX509SVIDResponse{Svids: []*pb.X509SVID{{ExpiresAt: notAfter.Unix(), SpiffeId: id.String(), CertChain: chain}}}
}
