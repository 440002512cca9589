package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/testsync"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestWithdrawnFederationClosesProxiedConnections: east and west trust each
// other through bundles installed out of band; a TCP connection from a
// workload of east goes through east's outbound proxy and west's inbound
// proxy to an echo app of west, and stays open. West then stops trusting
// east (`meshfed bundle delete east.example`): the bundle leaves west's
// agent and its workloads, and west's proxy closes the open connection,
// which Envoy would have kept to its end. Nothing restarts.
func TestWithdrawnFederationClosesProxiedConnections(t *testing.T) {
	dir := t.TempDir()
	east := startDomain(t, dir, "east.example", freePort(t), "{}\n", reviewsEast, "west.example")
	west := startDomain(t, dir, "west.example", freePort(t), "{}\n", ratingsWest, "east.example")
	exchangeBundles(t, dir, east, west)
	_, westSrc := bothBundles(t, east, west)

	p := echoThroughProxies(t, dir, east.workload, west.workload)
	westProxy, eastProxy := p.server, p.client

	meshfed(t, dir, "bundle", "delete", "east.example", "--admin-socket", west.sock)
	testsync.EventuallyWithin(t, 30*time.Second, "east's bundle to leave west's workloads", func() bool {
		_, err := westSrc.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("east.example"))
		return err != nil
	})
	// West's proxy checks its connections once a second.
	t.Logf("the open connection was closed %s after east's bundle left west's workload", p.waitClosed(t).Round(time.Millisecond))
	testsync.EventuallyWithin(t, 10*time.Second, "west's proxy to say why", func() bool {
		s := westProxy.logs.String()
		return strings.Contains(s, "closed a connection: its peer is no longer trusted") &&
			strings.Contains(s, "peer="+reviewsEast.String()) && strings.Contains(s, "trust domain east.example is no longer trusted")
	})
	p.refusesNew(t)
	for _, d := range []*daemon{westProxy, eastProxy} {
		d.mustRun(t)
	}
	for _, d := range []*domain{east, west} {
		d.agent.mustRun(t)
		if d.server.cmd.ProcessState != nil {
			t.Errorf("%s server exited", d.td)
		}
	}
}

// closedErr says whether err is the peer closing a connection (not a
// timeout).
func closedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// proxiedEcho is a TCP connection from a workload of one domain through its
// outbound proxy and the inbound proxy of another to an echo app there.
type proxiedEcho struct {
	conn           net.Conn
	client, server *daemon // the two meshfed proxies
	outPort        int     // the client proxy's outbound listener
}

// echoThroughProxies starts an echo app, a meshfed proxy for ratingsWest on
// the agent socket serverSock, accepting reviewsEast, and one for
// reviewsEast on clientSock with an outbound listener to it, then opens a
// connection through both and checks that it echoes. The connection has a
// 30 s deadline and is closed when the test ends.
func echoThroughProxies(t *testing.T, dir, clientSock, serverSock string) proxiedEcho {
	t.Helper()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	inPort, outPort := freePort(t), freePort(t)
	writeFile(t, filepath.Join(dir, "west-proxy.yaml"), fmt.Sprintf(`workload_api_socket: %s
inbound:
- {name: ratings-in, listen: "127.0.0.1:%d", forward_to: %q, allowed_ids: [%q]}
`, serverSock, inPort, echo.Addr().String(), reviewsEast))
	writeFile(t, filepath.Join(dir, "east-proxy.yaml"), fmt.Sprintf(`workload_api_socket: %s
outbound:
- {name: ratings, listen: "127.0.0.1:%d", service: ratings, upstream: "127.0.0.1:%d", allowed_ids: [%q]}
`, clientSock, outPort, inPort, ratingsWest))
	westProxy := startDaemon(t, dir, "west proxy", meshfedBin, "proxy", "--config", "west-proxy.yaml")
	eastProxy := startDaemon(t, dir, "east proxy", meshfedBin, "proxy", "--config", "east-proxy.yaml")
	for _, d := range []*daemon{westProxy, eastProxy} {
		testsync.EventuallyWithin(t, 60*time.Second, d.name+" to start", func() bool {
			d.mustRun(t)
			return strings.Contains(d.logs.String(), "meshfed proxy spiffe://")
		})
	}

	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", outPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	echoed := func(msg string) error {
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if string(got) != msg {
			return fmt.Errorf("echoed %q", got)
		}
		return nil
	}
	if err := echoed("across the federation"); err != nil {
		t.Fatalf("through both proxies: %v", err)
	}
	return proxiedEcho{conn: c, client: eastProxy, server: westProxy, outPort: outPort}
}

// waitClosed reads the connection until it is closed by a proxy, and says
// how long that took.
func (p proxiedEcho) waitClosed(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	if n, err := p.conn.Read(make([]byte, 1)); n != 0 || !closedErr(err) {
		t.Fatalf("the open connection read %d bytes, %v; want it closed", n, err)
	}
	return time.Since(start)
}

// refusesNew checks that a new connection through the proxies is closed
// without an echo: its handshake is refused.
func (p proxiedEcho) refusesNew(t *testing.T) {
	t.Helper()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.outPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, "again")
	if n, err := c.Read(make([]byte, 5)); n != 0 || !closedErr(err) {
		t.Fatalf("a new connection read %d bytes, %v; want it refused", n, err)
	}
}

// echoesNew opens a new connection through the proxies and checks that it
// echoes.
func (p proxiedEcho) echoesNew() error {
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.outPort))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "again"); err != nil {
		return err
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != "again" {
		return fmt.Errorf("echoed %q", got)
	}
	return nil
}
