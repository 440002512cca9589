package cli

import (
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/meshfed/meshfed/internal/duration"
	"github.com/meshfed/meshfed/internal/procruntime"
	"github.com/meshfed/meshfed/internal/server"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func init() { register(newServerCommand) }

func newServerCommand() *cobra.Command {
	var (
		configPath string
		cfg        server.Config
		rootTTL    string
	)
	c := &cobra.Command{
		Use:   "server",
		Short: "Run the CA and identity server of a trust domain",
		Long: `Run meshfed's server for one trust domain: a CA that signs X.509-SVIDs from
CSRs only after verifying the caller's credential (a Kubernetes service-account
JWT, a one-time join token, or a current SVID of this trust domain), deriving
the identity from that credential and never from the CSR.

It serves, on --listen, Istio's IstioCertificateService (istio-agent can use it
as its CA) and meshfed's Node API for agents, over TLS with the server's own
SVID; on --bundle-listen, the SPIFFE bundle endpoint; on --admin-socket, the
admin API (join tokens, registration entries, bundles), open only to allowed
uids; on --metrics-listen, /metrics, /healthz and /readyz.

The CA is a root generated on first start and kept in --data-dir, or Istio's
plug-in cacerts directory (--cacerts-dir), re-read without a restart when it
changes (and at once on SIGHUP, which never stops the server). State lives
in SQLite in --data-dir, or in Postgres (--datastore postgres://…) shared by
several servers of the domain.

When more signing requests arrive than it can sign (a fleet reconnecting at
once), it runs a bounded number, lets the next ones wait their turn in
arrival order, and answers the rest UNAVAILABLE at once so that they back
off (limits: in --config).

SIGHUP also reads --config again and applies its federation.federates_with
and https_web_roots_file: a new bundle endpoint peer is fetched at once, a
removed one no longer fetched (its bundle stays trusted until 'meshfed bundle
delete'). Every other key takes effect at the next restart.

Flags override the --config file; docs/configuration.md lists every key.`,
		Example: `  meshfed server --trust-domain east.example --data-dir ./east
  meshfed server --trust-domain east.example --data-dir ./east --listen 127.0.0.1:8443 \
    --bundle-listen 127.0.0.1:8444 --admin-socket ./east/admin.sock
  meshfed server --config server.yaml --datastore postgres://meshfed@db/meshfed`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			file := server.Config{}
			if configPath != "" {
				var err error
				if file, err = server.LoadConfig(configPath); err != nil {
					return err
				}
			}
			merged := overlay(file, cfg, c.Flags())
			if c.Flags().Changed("root-ttl") {
				d, err := duration.Parse(rootTTL)
				if err != nil {
					return usagef("--root-ttl: %v", err)
				}
				merged.CA.RootTTL = duration.Duration(d)
			}
			logger, err := newLogger(c, merged.LogLevel, merged.LogFormat)
			if err != nil {
				return err
			}
			applied, err := procruntime.Apply("server", merged.Runtime, procruntime.Defaults{GCPercent: server.DefaultGCPercent, MemoryLimit: server.DefaultMemoryLimit}, os.Getenv)
			if err != nil {
				return err
			}
			logger.Info("server: garbage collector", "gc_percent", applied.GCPercent, "memory_limit_bytes", applied.MemoryLimit, "from_environment", strings.Join(applied.FromEnv, ","))
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			srv, err := server.New(ctx, merged, server.Options{Logger: logger})
			if err != nil {
				return err
			}
			if n, changed := server.ProcsFor(srv.Datastore(), runtime.GOMAXPROCS(0), os.Getenv("GOMAXPROCS")); changed {
				runtime.GOMAXPROCS(n)
				logger.Info("server: GOMAXPROCS one above the CPUs, since SQLite's fsync holds a P (set GOMAXPROCS to choose)", "gomaxprocs", n)
			}
			a := srv.Addrs()
			progress(c, "meshfed server for %s: signing API %s, bundle endpoint %s, admin socket %s", srv.TrustDomain(), a.Listen, a.BundleListen, a.AdminSocket)
			onHangup(ctx, logger, "the CA's directory (cacerts or VirtualMesh) and the federation section of --config", func() {
				srv.ReloadCA()
				if configPath == "" {
					return
				}
				fc, err := server.LoadConfig(configPath)
				if err == nil {
					err = srv.ReloadFederation(fc.Federation)
				}
				if err != nil {
					logger.Error("SIGHUP: the federation section of the configuration is refused; the one in use stays", "error", err)
				}
			})
			return srv.Run(ctx)
		},
	}
	f := c.Flags()
	f.StringVar(&configPath, "config", "", "YAML configuration file (flags override it)")
	f.StringVar(&cfg.TrustDomain, "trust-domain", "", "trust domain served, e.g. east.example")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for the CA key (0600) and the SQLite store")
	f.StringVar(&cfg.Listen, "listen", server.DefaultListen, "address of the signing API (gRPC over TLS)")
	f.StringVar(&cfg.BundleListen, "bundle-listen", server.DefaultBundleListen, "address of the SPIFFE bundle endpoint")
	f.StringVar(&cfg.AdminSocket, "admin-socket", "", "unix socket of the admin API (default <data-dir>/admin.sock)")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", server.DefaultMetricsListen, `address of /metrics, /healthz, /readyz ("off" to disable)`)
	f.StringVar(&cfg.Datastore, "datastore", "", "postgres://… to share state with other servers (default SQLite in --data-dir)")
	f.StringVar(&cfg.ServerID, "server-id", "", "name of this server in the audit log (default host:listen)")
	f.StringSliceVar(&cfg.ServerNames, "server-name", nil, "DNS name or IP in the server's own SVID (repeatable; default localhost, 127.0.0.1, ::1)")
	f.StringVar(&cfg.CA.Mode, "ca-mode", "", "self-signed (default) or cacerts")
	f.StringVar(&cfg.CA.CACertsDir, "cacerts-dir", "", "Istio plug-in CA directory (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem); implies --ca-mode cacerts")
	f.StringVar(&cfg.CA.KeyType, "key-type", "", "key type of a generated root (default ec-p256)")
	f.StringVar(&rootTTL, "root-ttl", "", "lifetime of a generated root (default 10y)")
	f.StringVar(&cfg.BundleEndpoint.Profile, "bundle-profile", "", "bundle endpoint profile: https_spiffe (default) or https_web")
	f.StringVar(&cfg.BundleEndpoint.CertFile, "bundle-cert", "", "https_web: certificate file of the bundle endpoint")
	f.StringVar(&cfg.BundleEndpoint.KeyFile, "bundle-key", "", "https_web: key file of the bundle endpoint")
	f.StringVar(&cfg.LogLevel, "log-level", "", "debug, info (default), warn or error")
	f.StringVar(&cfg.LogFormat, "log-format", "", "text (default) or json")
	c.AddCommand(newServerHealthcheck(), newServerBackup())
	return c
}

// overlay applies the flags the user set onto the file's configuration; a
// flag left at its default does not override the file.
func overlay(file, flags server.Config, fs *pflag.FlagSet) server.Config {
	out := file
	set := func(name string, dst *string, v string) {
		if fs.Changed(name) || *dst == "" {
			*dst = v
		}
	}
	set("trust-domain", &out.TrustDomain, flags.TrustDomain)
	set("data-dir", &out.DataDir, flags.DataDir)
	set("listen", &out.Listen, flags.Listen)
	set("bundle-listen", &out.BundleListen, flags.BundleListen)
	set("admin-socket", &out.AdminSocket, flags.AdminSocket)
	set("metrics-listen", &out.MetricsListen, flags.MetricsListen)
	set("datastore", &out.Datastore, flags.Datastore)
	set("server-id", &out.ServerID, flags.ServerID)
	set("ca-mode", &out.CA.Mode, flags.CA.Mode)
	set("cacerts-dir", &out.CA.CACertsDir, flags.CA.CACertsDir)
	set("key-type", &out.CA.KeyType, flags.CA.KeyType)
	set("bundle-profile", &out.BundleEndpoint.Profile, flags.BundleEndpoint.Profile)
	set("bundle-cert", &out.BundleEndpoint.CertFile, flags.BundleEndpoint.CertFile)
	set("bundle-key", &out.BundleEndpoint.KeyFile, flags.BundleEndpoint.KeyFile)
	set("log-level", &out.LogLevel, flags.LogLevel)
	set("log-format", &out.LogFormat, flags.LogFormat)
	if fs.Changed("server-name") || len(out.ServerNames) == 0 {
		out.ServerNames = flags.ServerNames
	}
	if fs.Changed("cacerts-dir") && !fs.Changed("ca-mode") {
		out.CA.Mode = "cacerts"
	}
	return out
}

// newLogger makes the process's structured logger on stderr.
func newLogger(c *cobra.Command, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "", "info":
		lv = slog.LevelInfo
	case "debug":
		lv = slog.LevelDebug
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		return nil, usagef("log level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(c.ErrOrStderr(), opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(c.ErrOrStderr(), opts)), nil
	}
	return nil, usagef("log format %q: use text or json", format)
}
