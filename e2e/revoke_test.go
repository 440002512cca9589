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
`, west.workload, inPort, echo.Addr().String(), reviewsEast))
	writeFile(t, filepath.Join(dir, "east-proxy.yaml"), fmt.Sprintf(`workload_api_socket: %s
outbound:
- {name: ratings, listen: "127.0.0.1:%d", service: ratings, upstream: "127.0.0.1:%d", allowed_ids: [%q]}
`, east.workload, outPort, inPort, ratingsWest))
	westProxy := startDaemon(t, dir, "west proxy", meshfedBin, "proxy", "--config", "west-proxy.yaml")
	eastProxy := startDaemon(t, dir, "east proxy", meshfedBin, "proxy", "--config", "east-proxy.yaml")
	for _, d := range []*daemon{westProxy, eastProxy} {
		waitFor(t, 60*time.Second, d.name+" to start", func() bool {
			d.mustRun(t)
			return strings.Contains(d.logs.String(), "meshfed proxy spiffe://")
		})
	}

	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", outPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
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

	meshfed(t, dir, "bundle", "delete", "east.example", "--admin-socket", west.sock)
	waitFor(t, 30*time.Second, "east's bundle to leave west's workloads", func() bool {
		_, err := westSrc.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("east.example"))
		return err != nil
	})
	// West's proxy checks its connections once a second.
	start := time.Now()
	if n, err := c.Read(make([]byte, 1)); n != 0 || !closedErr(err) {
		t.Fatalf("the open connection read %d bytes, %v; want it closed", n, err)
	}
	t.Logf("the open connection was closed %s after east's bundle left west's workload", time.Since(start).Round(time.Millisecond))
	waitFor(t, 10*time.Second, "west's proxy to say why", func() bool {
		s := westProxy.logs.String()
		return strings.Contains(s, "closed a connection: its peer is no longer trusted") &&
			strings.Contains(s, "peer="+reviewsEast.String()) && strings.Contains(s, "trust domain east.example is no longer trusted")
	})
	// A new connection is refused in its handshake.
	c2, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", outPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c2, "again")
	if n, err := c2.Read(make([]byte, 5)); n != 0 || !closedErr(err) {
		t.Fatalf("a new connection after the withdrawal read %d bytes, %v; want it refused", n, err)
	}
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
