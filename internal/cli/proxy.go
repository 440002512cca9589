package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/meshfed/meshfed/internal/policy"
	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func init() { register(newProxyCommand) }

func newProxyCommand() *cobra.Command {
	var configPath, logLevel, logFmt string
	c := &cobra.Command{
		Use:   "proxy --config FILE",
		Short: "Run a TCP mTLS sidecar: inbound and outbound listeners with Istio's PeerAuthentication",
		Long: `Run meshfed's sidecar proxy as the --config file says (every key is in the example).
It takes its X.509-SVID and trust bundles from the agent's Workload API socket
(workload_api_socket) and follows their rotation without dropping open
connections.

Inbound listeners (inbound: listen, port, forward_to, allowed_ids) terminate
connections from other workloads and forward them to the local app over local
TCP. The mode of each port comes from the PeerAuthentication policies in the
policies directory for this workload (namespace, labels): STRICT requires
mTLS, PERMISSIVE serves mTLS and plaintext on the same port, told apart by
the first bytes, DISABLE serves plaintext only. Without policies every port
is PERMISSIVE. An mTLS peer is admitted if its SVID verifies against the
bundle of its own trust domain and, when allowed_ids is set, its SPIFFE ID or
trust domain ("spiffe://td/*") is listed.

Outbound listeners (outbound: listen, service, upstream, allowed_ids) take
plaintext from the local app and open mTLS to upstream, refusing a server
whose SPIFFE ID is not in allowed_ids for the service (Istio's secure naming).

Every connection ends in one access log line on stderr (listener, peer
SPIFFE ID or "plaintext", bytes each way, duration, result). limits caps
connections per listener and sets the idle, handshake and drain timeouts;
on SIGTERM the proxy stops accepting and lets open connections finish for up
to the drain timeout. metrics_listen serves Prometheus /metrics.

This version proxies TCP only: HTTP-level AuthorizationPolicy,
RequestAuthentication (JWT), X-Forwarded-Client-Cert injection, gateways and
policy reload without a restart are not done yet.`,
		Example: `  meshfed proxy --config proxy.yaml

  # proxy.yaml
  workload_api_socket: /run/meshfed/agent.sock
  namespace: db
  labels: {app: datastore}
  policies: /etc/meshfed/policies
  inbound:
  - {listen: "0.0.0.0:15006", forward_to: "127.0.0.1:5432", allowed_ids: ["spiffe://east.example/*"]}
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
			var pol proxy.MTLSPolicy
			if fc.Policies != "" {
				set, err := policy.LoadDir(fc.Policies, policy.SkipOtherKinds())
				if err != nil {
					return fmt.Errorf("proxy: policies: %w", err)
				}
				pol = set
			}
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			progress(c, "meshfed proxy: waiting for an X.509-SVID from %s", fc.WorkloadAPISocket)
			src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+fc.WorkloadAPISocket)))
			if err != nil {
				return fmt.Errorf("proxy: Workload API %s: %w (is the agent running, and is there an entry for this workload?)", fc.WorkloadAPISocket, err)
			}
			defer src.Close()
			sc, err := proxy.New(proxy.Config{Source: src, Namespace: fc.Namespace, Labels: fc.Labels, Policy: pol,
				Inbound: fc.Inbound, Outbound: fc.Outbound, Limits: fc.Limits, Logger: logger})
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			metricsDone := make(chan error, 1)
			if fc.MetricsListen != "" {
				ln, err := net.Listen("tcp", fc.MetricsListen)
				if err != nil {
					return fmt.Errorf("proxy: metrics_listen: %w", err)
				}
				hs := &http.Server{Handler: sc.Handler(), ReadHeaderTimeout: 5 * time.Second}
				go func() {
					<-ctx.Done()
					hs.Close()
				}()
				go func() {
					err := hs.Serve(ln)
					if errors.Is(err, http.ErrServerClosed) {
						err = nil
					}
					metricsDone <- err
					cancel()
				}()
			} else {
				metricsDone <- nil
			}
			id := "(no SVID)"
			if svid, err := src.GetX509SVID(); err == nil {
				id = svid.ID.String()
			}
			var parts []string
			for _, l := range sc.Listeners() {
				if l.Inbound {
					parts = append(parts, fmt.Sprintf("inbound %s %s -> %s (%s)", l.Name, l.Addr, l.Target, l.Mode))
				} else {
					parts = append(parts, fmt.Sprintf("outbound %s %s -> %s", l.Name, l.Addr, l.Target))
				}
			}
			progress(c, "meshfed proxy %s: %s", id, strings.Join(parts, ", "))
			err = sc.Run(ctx)
			cancel()
			if merr := <-metricsDone; err == nil {
				err = merr
			}
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&configPath, "config", "", "YAML configuration file (required; every key is in the example)")
	f.StringVar(&logLevel, "log-level", "", "debug, info (default), warn or error (overrides log_level)")
	f.StringVar(&logFmt, "log-format", "", "text (default) or json (overrides log_format)")
	return c
}
