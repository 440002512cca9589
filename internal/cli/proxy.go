package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshfed/meshfed/internal/agent/policyclient"
	"github.com/meshfed/meshfed/internal/policy"
	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func init() { register(newProxyCommand) }

func newProxyCommand() *cobra.Command {
	var configPath, logLevel, logFmt string
	var check bool
	c := &cobra.Command{
		Use:   "proxy --config FILE",
		Short: "Run an mTLS sidecar or gateway enforcing Istio's PeerAuthentication, RequestAuthentication and AuthorizationPolicy",
		Long: `Run meshfed's sidecar proxy as the --config file says (every key is in the example).
It takes its X.509-SVID and trust bundles from the agent's Workload API socket
(workload_api_socket) and follows their rotation without dropping open
connections.

Inbound listeners (inbound: listen, port, forward_to, protocol, allowed_ids)
terminate connections from other workloads and forward them to the local app
over local TCP, enforcing Istio's security policy for this workload
(namespace, labels), as written for kubectl apply, from the policies
directory and from the trust domain's server (meshfed policy apply, streamed
by the agent; server_policies: false turns it off):
  - PeerAuthentication sets each port's mode: STRICT requires mTLS,
    PERMISSIVE serves mTLS and plaintext on the same port, told apart by the
    first bytes, DISABLE serves plaintext only; PERMISSIVE without policies.
    An mTLS peer is admitted if its SVID verifies against the bundle of its
    own trust domain and, when allowed_ids is set, its SPIFFE ID or trust
    domain ("spiffe://td/*") is listed.
  - protocol: tcp (default): AuthorizationPolicy's TCP subset decides each
    connection.
  - protocol: http (HTTP/1.1, and h2 over TLS): per request,
    RequestAuthentication validates the JWT (invalid: 401) and
    AuthorizationPolicy decides (denied: 403 "RBAC: access denied"); the app
    gets X-Forwarded-Client-Cert naming the mTLS peer.
A change to the directory (polled every second, and read at once on SIGHUP,
which never stops the proxy) or on the server takes effect without a restart;
a set that does not build is refused, with the file and line in the log, and
the last good one stays in force.

Outbound listeners (outbound: listen, service, upstream, allowed_ids, protocol)
take plaintext from the local app and open mTLS to upstream, refusing a server
whose SPIFFE ID is not in allowed_ids for the service (Istio's secure naming).
protocol: tcp tunnels each app connection over its own mTLS connection;
protocol: http sends the app's requests over pooled keep-alive mTLS
connections, so a new app connection costs no handshake.

A kept-alive HTTP connection carries requests only while its handshake's
proof holds: once the peer's certificate chain has expired, or no longer
verifies against its trust domain's present bundle, an inbound request on
it gets 421 and the connection closes, and the outbound pool reconnects.
Once a second every open connection is checked again, and one whose peer is
no longer trusted (its trust domain withdrawn, its root replaced) is closed,
whatever its protocol.

Gateways (gateways: ingress, egress) take their certificates from PEM files
instead of the agent (reloaded when the files change), so a proxy with only
gateways needs no workload_api_socket. An ingress gateway terminates TLS
(tls.mode SIMPLE, or MUTUAL with a client certificate from ca_certificates)
and routes by SNI (protocol tcp) or Host header (protocol http, with
X-Forwarded-Client-Cert) to plaintext backends; an egress gateway takes
plaintext from the app and opens TLS, with a client certificate in MUTUAL
mode, to an upstream. See docs/gateways.md.

Every connection ends in one access log line on stderr (listener, peer
SPIFFE ID or "plaintext", bytes each way, duration, result), and every HTTP
request in one more (source.principal, method, path without the query,
status, the deciding policy and rule); tokens are never logged. limits caps
connections per listener, sets the idle, handshake and drain timeouts and,
optionally, a maximum connection duration;
on SIGTERM the proxy stops accepting and lets open connections finish for up
to the drain timeout. metrics_listen serves Prometheus /metrics.
See docs/configuration.md for every key and what each listener enforces.`,
		Example: `  meshfed proxy --config proxy.yaml

  # proxy.yaml
  workload_api_socket: /run/meshfed/agent.sock
  namespace: db
  labels: {app: datastore}
  policies: /etc/meshfed/policies
  inbound:
  - {listen: "0.0.0.0:15006", forward_to: "127.0.0.1:5432", allowed_ids: ["spiffe://east.example/*"]}
  - {listen: "0.0.0.0:15008", forward_to: "127.0.0.1:8080", protocol: http}
  outbound:
  - listen: 127.0.0.1:15001
    service: ratings
    upstream: ratings.west:15006
    allowed_ids: [spiffe://west.example/ns/default/sa/ratings]
  limits: {max_connections: 1024, idle_timeout: 5m, handshake_timeout: 10s, drain_timeout: 30s}
  metrics_listen: 127.0.0.1:15090`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if configPath == "" {
				return usagef("--config is required: the proxy's YAML configuration")
			}
			fc, err := proxy.LoadConfig(configPath)
			if err != nil {
				return err
			}
			if check {
				return checkProxyConfig(c, configPath, fc)
			}
			if !c.Flags().Changed("log-level") {
				logLevel = fc.LogLevel
			}
			if !c.Flags().Changed("log-format") {
				logFmt = fc.LogFormat
			}
			logger, err := newLogger(c, logLevel, logFmt)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// Gateways take their certificates from files: a proxy with
			// only gateways does not need the agent.
			var src *workloadapi.X509Source
			var source proxy.Source
			if len(fc.Inbound)+len(fc.Outbound) > 0 {
				progress(c, "meshfed proxy: waiting for an X.509-SVID from %s", fc.WorkloadAPISocket)
				src, err = workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+fc.WorkloadAPISocket)))
				if err != nil {
					return fmt.Errorf("proxy: Workload API %s: %w (is the agent running, and is there an entry for this workload?)", fc.WorkloadAPISocket, err)
				}
				defer src.Close()
				source = src
			}
			sc, err := proxy.New(proxy.Config{Source: source, Namespace: fc.Namespace, Labels: fc.Labels,
				Inbound: fc.Inbound, Outbound: fc.Outbound, Gateways: fc.Gateways, Limits: fc.Limits, Logger: logger})
			if err != nil {
				return err
			}
			loader, err := startPolicies(ctx, c, fc, sc, logger)
			if err != nil {
				return err
			}
			go loader.Run(ctx, proxy.DefaultPolicyPoll)
			if fc.Policies == "" {
				onHangup(ctx, logger, "", nil)
			} else {
				onHangup(ctx, logger, "the policy directory", func() {
					if _, err := loader.ReloadDir(); err != nil {
						logger.Error(err.Error())
					}
				})
			}
			var serve func(context.Context) error
			if fc.MetricsListen != "" {
				if serve, err = listenMetrics(fc.MetricsListen, sc.Handler()); err != nil {
					return fmt.Errorf("proxy: metrics_listen: %w", err)
				}
			}
			id := "(no SVID)"
			if src == nil {
				id = "(gateways only)"
			} else if svid, err := src.GetX509SVID(); err == nil {
				id = svid.ID.String()
			}
			var parts []string
			for _, l := range sc.Listeners() {
				if l.Gateway != "" {
					parts = append(parts, fmt.Sprintf("%s gateway %s %s -> %s (%s)", l.Gateway, l.Name, l.Addr, l.Target, l.TLSMode))
				} else if l.Inbound {
					parts = append(parts, fmt.Sprintf("inbound %s %s -> %s (%s)", l.Name, l.Addr, l.Target, l.Mode))
				} else {
					parts = append(parts, fmt.Sprintf("outbound %s %s -> %s", l.Name, l.Addr, l.Target))
				}
			}
			progress(c, "meshfed proxy %s: %s", id, strings.Join(parts, ", "))
			return runBeside(ctx, sc.Run, serve)
		},
	}
	f := c.Flags()
	f.StringVar(&configPath, "config", "", "YAML configuration file (required; every key is in the example)")
	f.StringVar(&logLevel, "log-level", "", "debug, info (default), warn or error (overrides log_level)")
	f.StringVar(&logFmt, "log-format", "", "text (default) or json (overrides log_format)")
	f.BoolVar(&check, "check", false, "check the configuration, the policies directory (with lint findings) and the gateways' certificate files, print what would run, and exit: 0 valid, 1 not")
	return c
}

// checkProxyConfig is `meshfed proxy --config FILE --check`: everything the
// proxy reads at start, without binding a port or asking the agent.
func checkProxyConfig(c *cobra.Command, path string, fc proxy.FileConfig) error {
	w := c.OutOrStdout()
	var set *policy.Set
	if fc.Policies != "" {
		var opts []policy.Option
		if fc.RootNamespace != "" {
			opts = append(opts, policy.WithRootNamespace(fc.RootNamespace))
		}
		docs, err := policy.ReadDir(fc.Policies, append([]policy.Option{policy.SkipOtherKinds()}, opts...)...)
		if err != nil {
			return err
		}
		if set, err = policy.NewSet(docs, opts...); err != nil {
			return err
		}
		fmt.Fprintf(w, "policies %s: %d documents\n", fc.Policies, len(docs))
		for _, f := range set.Lint() {
			fmt.Fprintf(w, "  lint: %s\n", f)
		}
	}
	if err := fc.Gateways.CheckFiles(); err != nil {
		return err
	}
	for _, in := range fc.Inbound {
		proto := in.Protocol
		if proto == "" {
			proto = proxy.ProtocolTCP
		}
		mode := "PERMISSIVE (no policies directory; the server's policies may change it)"
		if set != nil {
			port, err := proxy.InboundPort(in)
			if err != nil {
				return err
			}
			d := set.MTLS(fc.Namespace, fc.Labels, port)
			mode = fmt.Sprintf("%s (set by %s)", d.Mode, d.Policy)
		}
		fmt.Fprintf(w, "inbound %s -> %s, %s, mTLS %s\n", in.Listen, in.ForwardTo, proto, mode)
	}
	for _, out := range fc.Outbound {
		fmt.Fprintf(w, "outbound %s -> %s, service %s served by %s\n", out.Listen, out.Upstream, out.Service, strings.Join(out.AllowedIDs, ", "))
	}
	for _, in := range fc.Gateways.Ingress {
		fmt.Fprintf(w, "ingress gateway %s on %s, tls %s, %d routes\n", in.Name, in.Listen, in.TLS.Mode, len(in.Routes))
	}
	for _, out := range fc.Gateways.Egress {
		fmt.Fprintf(w, "egress gateway %s on %s -> %s, tls %s\n", out.Name, out.Listen, out.Upstream, out.TLS.Mode)
	}
	fmt.Fprintf(w, "%s: valid\n", path)
	return nil
}

// serverPolicyWait is how long the proxy waits, at start, for the agent's
// first policy snapshot before it serves with the directory's policies
// alone (an agent without the policy service, or one still waiting for its
// server).
const serverPolicyWait = 10 * time.Second

// startPolicies puts the proxy's first policy set in force: the policies
// directory, read now (a bad document fails the start), and the server's
// policies, streamed by the agent (the first snapshot is waited for, up to
// serverPolicyWait). Later changes to either replace the set while the
// proxy runs; a change that does not build is refused and logged, and the
// last good set stays.
func startPolicies(ctx context.Context, c *cobra.Command, fc proxy.FileConfig, sc *proxy.Sidecar, logger *slog.Logger) (*proxy.PolicyLoader, error) {
	var opts []policy.Option
	if fc.RootNamespace != "" {
		opts = append(opts, policy.WithRootNamespace(fc.RootNamespace))
	}
	loader := proxy.NewPolicyLoader(sc, fc.Policies, policy.NewJWKSCache(policy.JWKSCacheConfig{}), opts...)
	if _, err := loader.ReloadDir(); err != nil {
		return nil, err
	}
	if fc.WorkloadAPISocket == "" || len(fc.Inbound) == 0 || (fc.ServerPolicies != nil && !*fc.ServerPolicies) {
		return loader, nil
	}
	client, err := policyclient.New(policyclient.Config{SocketPath: fc.WorkloadAPISocket, Logger: logger})
	if err != nil {
		return nil, err
	}
	first := make(chan struct{})
	var once sync.Once
	go func() {
		_ = client.Watch(ctx, func(docs []policy.Document, revision int64) {
			if err := loader.SetPushed(docs, revision); err != nil {
				logger.Error(err.Error())
			} else {
				logger.Info("proxy: server policies in force", "revision", revision, "documents", len(docs))
			}
			once.Do(func() { close(first) })
		})
	}()
	select {
	case <-first:
	case <-ctx.Done():
	case <-time.After(serverPolicyWait):
		progress(c, "meshfed proxy: no policy from the agent at %s after %s: serving with the policies directory alone until it comes (server_policies: false turns this off)",
			fc.WorkloadAPISocket, serverPolicyWait)
	}
	return loader, nil
}
