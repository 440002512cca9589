package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/meshfed/meshfed/internal/agent"
	"github.com/meshfed/meshfed/internal/agent/admit"
	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/files"
	"github.com/meshfed/meshfed/internal/agent/sds"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/duration"
	"github.com/spf13/cobra"
)

func init() { register(newAgentCommand) }

func newAgentCommand() *cobra.Command {
	var (
		cfg               agent.Config
		socket            string
		tokenFile         string
		logLevel, logFmt  string
		fileDir, fileExec string
		fileSelectors     []string
		configPath        string
		sdsSocket         string
		metricsListen     string
	)
	c := &cobra.Command{
		Use:   "agent --server ADDR --trust-bundle FILE --join-token TOKEN --data-dir DIR --socket PATH",
		Short: "Run a node agent: workload keys, SVID rotation, the SPIFFE Workload API",
		Long: `Run meshfed's node agent. On first start it attests to the server with a
one-time join token (meshfed token create), verifying the server with
--trust-bundle, and keeps its node SVID in --data-dir (mode 0600), so a restart
needs no new token. It follows the server for the registration entries whose
parent is this node and for trust bundle changes, keeps an X.509-SVID for each
entry (renewed at about half life, with backoff while the server is away), and
serves them on --socket over the SPIFFE Workload API (and, with --sds-socket,
over Envoy SDS: "default", "ROOTCA", and "ALL" with one bundle per trust
domain for Envoy's SPIFFE validator) to the workloads the kernel identifies as
matching each entry's selectors (unix:uid, unix:gid, unix:path …). Workload keys never leave this process except to the workload
that owns them.

Sidecar mode (--token-file): one agent per workload, which proves itself with
the workload's service-account token (re-read for every attestation, since
tokens rotate); the server derives the identity from the token, and every
local caller gets that one SVID.

Any SPIFFE Workload API client works: go-spiffe, SPIRE's tools, Envoy via a
SPIFFE-aware helper, or 'meshfed svid fetch'. Workloads are held to limits on
the connections and calls they keep open, in all and per uid (limits: in
--config); a refused one is told which limit, and the agent logs it.

The agent stops on SIGINT or SIGTERM. SIGHUP is logged and changes nothing:
its configuration is read at start.`,
		Example: `  meshfed agent --server 127.0.0.1:8443 --trust-bundle east/ca/ca.pem --join-token "$TOKEN" \
    --data-dir /var/lib/meshfed/agent --socket /run/meshfed/agent.sock
  # also keep files for a workload that reads them, reloading it on change
  meshfed agent ... --file-dir /etc/nginx/certs --file-selector unix:uid:101 --file-exec 'nginx -s reload'`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			var rt agent.RuntimeConfig
			var limits admit.Limits
			if configPath != "" {
				fc, err := agent.LoadConfig(configPath)
				if err != nil {
					return err
				}
				rt = fc.Runtime
				limits = admit.Limits{
					Conns:       fc.Limits.MaxConnections,
					ConnsPerUID: fc.Limits.MaxConnectionsPerUID,
					Calls:       fc.Limits.MaxCalls,
					CallsPerUID: fc.Limits.MaxCallsPerUID,
				}
				fs := c.Flags()
				fill := func(name string, dst *string, v string) {
					if !fs.Changed(name) && v != "" {
						*dst = v
					}
				}
				fill("server", &cfg.ServerAddr, fc.Server)
				fill("trust-bundle", &cfg.TrustBundle, fc.TrustBundle)
				fill("join-token-file", &tokenFile, fc.JoinTokenFile)
				fill("token-file", &cfg.TokenFile, fc.TokenFile)
				fill("data-dir", &cfg.DataDir, fc.DataDir)
				fill("socket", &socket, fc.Socket)
				fill("sds-socket", &sdsSocket, fc.SDSSocket)
				fill("metrics-listen", &metricsListen, fc.MetricsListen)
				fill("log-level", &logLevel, fc.LogLevel)
				fill("log-format", &logFmt, fc.LogFormat)
				fill("file-dir", &fileDir, fc.Files.Dir)
				fill("file-exec", &fileExec, fc.Files.Exec)
				if !fs.Changed("file-selector") && len(fc.Files.Selectors) > 0 {
					fileSelectors = fc.Files.Selectors
				}
				if fc.Rotation.MaxBackoff != "" {
					d, err := duration.Parse(fc.Rotation.MaxBackoff)
					if err != nil {
						return fmt.Errorf("agent: config %s: rotation.max_backoff: %w", configPath, err)
					}
					cfg.MaxBackoff = d
				}
			}
			if cfg.ServerAddr == "" || cfg.DataDir == "" {
				return usagef("--server and --data-dir are required (as flags or in --config)")
			}
			if socket == "" {
				return usagef("--socket is required: the Workload API socket workloads connect to")
			}
			if tokenFile != "" {
				data, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("--join-token-file: %w", err)
				}
				cfg.JoinToken = string(bytes.TrimSpace(data))
				cfg.JoinTokenFile = tokenFile
			}
			logger, err := newLogger(c, logLevel, logFmt)
			if err != nil {
				return err
			}
			cfg.Logger = logger
			applied, err := agent.ApplyRuntime(rt, os.Getenv)
			if err != nil {
				return err
			}
			logger.Info("agent: garbage collector", "gc_percent", applied.GCPercent, "memory_limit_bytes", applied.MemoryLimit, "from_environment", strings.Join(applied.FromEnv, ","))
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			a, err := agent.New(cfg)
			if err != nil {
				return err
			}
			defer a.Close()
			onHangup(ctx, logger, "", nil)
			if err := a.Start(ctx); err != nil {
				return err
			}
			gate, err := admit.New(admit.Config{Limits: limits, Logger: logger})
			if err != nil {
				return err
			}
			if err := a.RegisterMetrics(gate.Collectors()...); err != nil {
				return err
			}
			in := gate.Limits()
			logger.Info("agent: workload limits", "max_connections", in.Conns, "max_connections_per_uid", in.ConnsPerUID, "max_calls", in.Calls, "max_calls_per_uid", in.CallsPerUID)
			att, err := attest.New(attest.Config{Admit: gate.Conn})
			if err != nil {
				return err
			}
			wl, err := workloadapi.New(workloadapi.Config{SocketPath: socket, Source: a.Cache, Attestor: att, Logger: logger, Gate: gate})
			if err != nil {
				return err
			}
			runs := []func(context.Context) error{a.Run, wl.Run}
			if sdsSocket != "" {
				srv, err := sds.New(sds.Config{SocketPath: sdsSocket, Source: a.Cache, Attestor: att, Logger: logger, Gate: gate})
				if err != nil {
					return err
				}
				runs = append(runs, srv.Run)
			}
			if fileDir != "" {
				var sel []attest.Selector
				for _, s := range fileSelectors {
					parsed, err := attest.ParseSelector(s)
					if err != nil {
						return usagef("--file-selector %q: %v", s, err)
					}
					sel = append(sel, parsed)
				}
				fw, err := files.New(files.Config{Dir: fileDir, Selectors: sel, Command: fileExec, Source: a.Cache, Logger: logger})
				if err != nil {
					return err
				}
				runs = append(runs, fw.Run)
			}
			if metricsListen != "" {
				serve, err := listenMetrics(metricsListen, a.Handler())
				if err != nil {
					return fmt.Errorf("--metrics-listen: %w", err)
				}
				runs = append(runs, serve)
			}
			progress(c, "meshfed agent %s: Workload API on %s", a.NodeID(), socket)
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var wg sync.WaitGroup
			errs := make(chan error, len(runs))
			for _, run := range runs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := run(ctx); err != nil {
						errs <- err
						cancel()
					}
				}()
			}
			wg.Wait()
			select {
			case err := <-errs:
				return err
			default:
				return nil
			}
		},
	}
	f := c.Flags()
	f.StringVar(&configPath, "config", "", "YAML configuration file (flags override it; see docs/configuration.md)")
	f.StringVar(&cfg.ServerAddr, "server", "", "the server's signing API, host:port")
	f.StringVar(&cfg.TrustBundle, "trust-bundle", "", "the server's trust domain bundle (PEM or SPIFFE JSON), to verify the server on first start")
	f.StringVar(&cfg.JoinToken, "join-token", "", "one-time join token (only needed until the node SVID is in --data-dir)")
	f.StringVar(&tokenFile, "join-token-file", "", "read the join token from this file instead; read again whenever the agent must attest again (after 'meshfed node evict'), so a new token written there needs no restart")
	f.StringVar(&cfg.TokenFile, "token-file", "", "sidecar mode: the workload's service-account token file, re-read for every attestation; the server derives the identity from it")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for the node SVID (0600) and the last trust bundle")
	f.StringVar(&socket, "socket", "", "the Workload API unix socket to serve")
	f.StringVar(&sdsSocket, "sds-socket", "", "also serve Envoy SDS (default, ROOTCA, ALL) on this unix socket")
	f.StringVar(&fileDir, "file-dir", "", "file mode: also write svid.pem, svid_key.pem (0600), bundle.pem here")
	f.StringSliceVar(&fileSelectors, "file-selector", nil, "file mode: selectors of the workload the files are for, e.g. unix:uid:1000 (repeatable)")
	f.StringVar(&fileExec, "file-exec", "", "file mode: command run with /bin/sh -c after each write, e.g. 'nginx -s reload'")
	f.StringVar(&metricsListen, "metrics-listen", "", "serve /metrics, /healthz and /readyz on this address (off by default)")
	f.StringVar(&logLevel, "log-level", "", "debug, info (default), warn or error")
	f.StringVar(&logFmt, "log-format", "", "text (default) or json")

	c.AddCommand(newAgentHealthcheck())
	return c
}
