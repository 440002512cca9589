package cli

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/duration"
	"github.com/meshfed/meshfed/internal/federation/controller"
	"github.com/meshfed/meshfed/internal/federation/virtualmesh"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
)

func init() { register(newFederationCommand) }

func newFederationCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "federation",
		Short: "Run a VirtualMesh: one shared root, a name-constrained intermediate per member trust domain",
		Long: `A VirtualMesh federates meshfed servers, each the CA of its own trust domain,
the way Service Mesh Hub and Gloo Mesh do: one shared root CA, and for each
member an intermediate CA signed from a CSR the member makes (its key never
leaves it), carrying a URI name constraint that permits only that member's
trust domain. Every workload trusts the shared root, so workloads of all
members verify each other, and no member can issue an identity of another.

'meshfed federation run' is the controller, configured by a VirtualMesh
resource (networking.smh.solo.io/v1alpha1, v1alpha2, or
networking.mesh.gloo.solo.io/v1) with each mesh's trustDomain added. Members
join with a one-time token from 'meshfed federation token create'; 'status'
shows who holds what; 'rotate-root' rotates the shared root in phases that
wait for every member and agent.`,
		Example: `  meshfed federation run --config virtualmesh.yaml
  TOKEN=$(meshfed federation token create --admin-socket virtual-mesh/admin.sock --trust-domain east.example)
  meshfed federation status --admin-socket virtual-mesh/admin.sock
  meshfed federation rotate-root --admin-socket virtual-mesh/admin.sock`,
	}
	token := &cobra.Command{
		Use:   "token",
		Short: "One-time tokens that let a member join the VirtualMesh",
		Long: `A join token lets the meshfed server of one member trust domain join the
VirtualMesh once. The controller keeps only its SHA-256 hash; the token is
shown once, when it is made.`,
		Example: `  meshfed federation token create --admin-socket virtual-mesh/admin.sock --trust-domain east.example`,
		Args:    unknownSubcommand,
		RunE:    func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	token.AddCommand(newFederationTokenCreate())
	c.AddCommand(newFederationRun(), token, newFederationStatus(), newFederationRotateRoot())
	return c
}

func newFederationRun() *cobra.Command {
	var (
		configPath, dataDir, listen, adminSocket string
		rotateBefore, logLevel, logFormat        string
		metricsListen                            string
		interTTL, servingTTL                     time.Duration
		manual                                   bool
	)
	c := &cobra.Command{
		Use:   "run --config VIRTUALMESH.yaml",
		Short: "Run the VirtualMesh controller",
		Long: `Run the VirtualMesh controller until SIGINT or SIGTERM.

It reads the VirtualMesh from --config. On first start it makes the shared
root (spec.mtlsConfig.shared.rootCertificateAuthority.generated, or the v1alpha1
spec.certificateAuthority.builtin: ttlDays, rsaKeySizeBytes - which counts
bits: 2048, 3072 or 4096 - and orgName; ECDSA P-256 when no size is given),
or takes an existing one from PEM files (files: {rootCertFile, rootKeyFile},
relative to the config file). A root in a Kubernetes secret is refused: give
files. autoRestartPods is accepted and not needed.

The file is read again whenever it changes (it is checked every 5s, and at
once on SIGHUP, which never stops the controller), and applied without a
restart: a mesh added to spec.meshes can be given a join
token; a mesh removed is refused from its next call on, its record and
unused tokens are dropped, and every other member stops trusting its trust
domain (their workloads lose its bundle, and meshfed proxies close their
connections with it). enforceAccessControl changes reach members the same
way; root settings apply to the next root a rotation makes. A file that
does not parse, or renames the VirtualMesh, is refused with a log line and
the one in use stays.

--data-dir (0700) keeps the keys of the roots it made (0600) and state.json
(0600: root certificates, join tokens as hashes, members and their reports,
the rotation), written before anything is answered, so a restart loses
nothing. root-cert.pem there holds every root members must trust: hand it to
a member with its join token.

Members call the Controller API on --listen (gRPC over TLS). The controller
presents spiffe://<metadata.name>/meshfed/federation-controller, issued by
the active root for --serving-ttl and re-issued at half of it and when the
signing root changes; members check that ID and the chain to the shared
roots. After joining, members present their own server SVID
spiffe://<trust domain>/meshfed/server, which must chain through their
intermediate. Intermediates live --intermediate-ttl (clipped to the root).

Root rotation moves through phases - stable, publishing (the new root is
trusted beside the old one), reissuing (the new root signs; members renew),
retiring (the old root is still trusted until nothing depends on it), stable -
each advancing by itself when every member reports it may, or only by
'rotate-root' with --manual-rotation. A rotation starts by itself when the
active root has less than --rotate-root-before left.

The admin socket (default <data-dir>/admin.sock, 0600) takes token, status and
rotate-root from this uid and root. --metrics-listen serves Prometheus
metrics (meshfed_federation_*: generation, rotation phase, root expiries,
each member's joined state, last contact, applied generation and
intermediate expiry, a refused VirtualMesh file) and /healthz.`,
		Example: `  meshfed federation run --config virtualmesh.yaml
  meshfed federation run --config virtualmesh.yaml --data-dir /var/lib/meshfed/vm --listen 0.0.0.0:9443 \
    --intermediate-ttl 90d --rotate-root-before 60d`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			before, err := parseRotateBefore(rotateBefore)
			if err != nil {
				return err
			}
			logger, err := newLogger(c, logLevel, logFormat)
			if err != nil {
				return err
			}
			vm, err := virtualmesh.Load(configPath)
			if err != nil {
				return err
			}
			if dataDir == "" {
				dataDir = vm.Name
			}
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ctl, err := controller.New(controller.Config{
				Mesh: vm, MeshFile: configPath, DataDir: dataDir, Listen: listen, AdminSocket: adminSocket,
				IntermediateTTL: interTTL, ServingTTL: servingTTL, RotateRootBefore: before, ManualRotation: manual, Logger: logger,
			})
			if err != nil {
				return err
			}
			progress(c, "VirtualMesh %s: controller API %s as %s, admin socket %s; members trust %s",
				vm.Name, ctl.Addr(), ctl.ID(), ctl.AdminSocket(), ctl.RootCertFile())
			onHangup(ctx, logger, "the VirtualMesh file", func() { _, _ = ctl.ReloadMesh() })
			var serve func(context.Context) error
			if metricsListen != "" {
				if serve, err = listenMetrics(metricsListen, ctl.Handler()); err != nil {
					ctl.Close()
					return fmt.Errorf("federation controller: --metrics-listen: %w", err)
				}
				logger.Info("federation controller: metrics", "metrics_listen", metricsListen)
			}
			return runBeside(ctx, ctl.Run, serve)
		},
	}
	f := c.Flags()
	f.StringVar(&configPath, "config", "", "the VirtualMesh YAML file")
	f.StringVar(&dataDir, "data-dir", "", "directory for the root keys and the state (default ./<metadata.name>)")
	f.StringVar(&listen, "listen", controller.DefaultListen, "address of the Controller API (gRPC over TLS)")
	f.StringVar(&adminSocket, "admin-socket", "", "unix socket of the admin API (default <data-dir>/admin.sock)")
	f.Var(newTTL(&interTTL, controller.DefaultIntermediateTTL), "intermediate-ttl", "lifetime of members' intermediates")
	f.Var(newTTL(&servingTTL, controller.DefaultServingTTL), "serving-ttl", "lifetime of the controller's own serving certificate (re-issued at half of it)")
	f.StringVar(&rotateBefore, "rotate-root-before", "30d", `start a root rotation when the active root has less than this left (at most half its life); "off" never`)
	f.BoolVar(&manual, "manual-rotation", false, "advance rotation phases only with 'meshfed federation rotate-root'")
	f.StringVar(&metricsListen, "metrics-listen", "", "address of /metrics and /healthz, e.g. 127.0.0.1:9987 (default: none)")
	f.StringVar(&logLevel, "log-level", "", "debug, info (default), warn or error")
	f.StringVar(&logFormat, "log-format", "", "text (default) or json")
	required(c, "config")
	return c
}

func parseRotateBefore(s string) (time.Duration, error) {
	if s == "off" {
		return 0, nil
	}
	d, err := duration.Parse(s)
	if err != nil {
		return 0, usagef("--rotate-root-before: %v, or off", err)
	}
	return d, nil
}

// federationAdmin is the connection to a controller's admin socket.
type federationAdmin struct{ socket string }

func (a *federationAdmin) add(c *cobra.Command) {
	c.Flags().StringVar(&a.socket, "admin-socket", os.Getenv("MESHFED_FEDERATION_ADMIN_SOCKET"),
		"the controller's admin socket, or a meshfed server's for its own root (default $MESHFED_FEDERATION_ADMIN_SOCKET)")
}

// call dials the admin socket, runs f with a bounded context, and turns a
// gRPC status into one line with the controller's reason.
func (a *federationAdmin) call(c *cobra.Command, f func(ctx context.Context, client pb.AdminClient) error) error {
	if a.socket == "" {
		return usagef("give --admin-socket PATH (the controller's, default <data-dir>/admin.sock) or set MESHFED_FEDERATION_ADMIN_SOCKET")
	}
	return callSocket(c, a.socket, "is 'meshfed federation run' running?", func(ctx context.Context, conn *grpc.ClientConn) error {
		return f(ctx, pb.NewAdminClient(conn))
	})
}

func newFederationTokenCreate() *cobra.Command {
	var (
		admin federationAdmin
		td    string
		ttl   time.Duration
	)
	c := &cobra.Command{
		Use:   "create --admin-socket PATH --trust-domain TD",
		Short: "Create a join token for a member; prints the token and nothing else on stdout",
		Long: `Create a one-time token with which the meshfed server of --trust-domain (a mesh
of the VirtualMesh) joins. Only the token is printed on stdout, so scripts can
capture it; give it to the member with the controller's root-cert.pem.`,
		Example: `  TOKEN=$(meshfed federation token create --admin-socket virtual-mesh/admin.sock --trust-domain east.example --ttl 10m)`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			id, err := trustDomainArg(td)
			if err != nil {
				return err
			}
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				resp, err := client.CreateToken(ctx, &pb.CreateTokenRequest{TrustDomain: id.Name(), TtlSeconds: int64(ttl / time.Second)})
				if err != nil {
					return err
				}
				fmt.Fprintln(c.OutOrStdout(), resp.GetToken())
				progress(c, "join token for %s, valid until %s, usable once", id.Name(), time.Unix(resp.GetExpiresAt(), 0).UTC().Format(time.RFC3339))
				return nil
			})
		},
	}
	admin.add(c)
	c.Flags().StringVar(&td, "trust-domain", "", "the member's trust domain, one of spec.meshes, e.g. east.example")
	c.Flags().Var(newTTL(&ttl, 0), "ttl", "how long the token can be used (default: the controller's, 1h; at most 7d)")
	required(c, "trust-domain")
	return c
}

func newFederationStatus() *cobra.Command {
	var (
		admin federationAdmin
		out   string
	)
	c := &cobra.Command{
		Use:   "status --admin-socket PATH",
		Short: "Show the VirtualMesh: roots, members, and what a rotation waits for",
		Long: `Show the VirtualMesh's roots with their states (active: signs; published:
trusted, not yet signing; retiring: trusted, no longer signing), the rotation
phase, and per member trust domain: its address, its intermediate (serial,
expiry, the root it chains to), last contact, the state generation it has
applied, how many of its agents have the current roots, and its live SVIDs per
root. "waiting for" names who still keeps the rotation from its next phase.
When the controller refused its VirtualMesh file as it is on disk now, the
status says why; the VirtualMesh read before stays in use. JWT KEYS counts
the JWT-SVID keys each member reported, which every member is sent (their
key IDs are in the JSON).

Against a meshfed server's admin socket it shows that server's own roots
(active, published, retiring), the phase of their rotation, its agents and its
live SVIDs per root.`,
		Example: `  meshfed federation status --admin-socket virtual-mesh/admin.sock
  meshfed federation status --admin-socket virtual-mesh/admin.sock -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if err := checkOutput(out); err != nil {
				return err
			}
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				st, err := client.Status(ctx, &pb.StatusRequest{})
				if err != nil {
					return err
				}
				return printFederationStatus(c.OutOrStdout(), out, st)
			})
		},
	}
	admin.add(c)
	outputFlag(c, &out)
	return c
}

func newFederationRotateRoot() *cobra.Command {
	var (
		admin federationAdmin
		out   string
		force bool
	)
	c := &cobra.Command{
		Use:   "rotate-root --admin-socket PATH",
		Short: "Start a rotation of the shared root (or a server's own root), or move the one in progress on",
		Long: `From stable, make a new root and publish it beside the active one (phase
publishing). During a rotation, move to the next phase - reissuing, retiring,
stable - when the current phase's condition holds; the controller does that by
itself unless it runs with --manual-rotation. --force moves on even when
members still depend on the old root; what it did not wait for is printed on
stderr, and those members must renew or join again. Prints the resulting
status.

Against a meshfed server's admin socket it rotates that server's own
self-signed root (bundle federation): publishing (the next root is in the
bundle, not signing), retiring (it signs; the old one stays published until
nothing signed under it is alive), stable. With ca.auto_rotate (the default)
the server moves through the phases by itself once started.`,
		Example: `  meshfed federation rotate-root --admin-socket virtual-mesh/admin.sock
  meshfed federation rotate-root --admin-socket virtual-mesh/admin.sock --force -o yaml`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if err := checkOutput(out); err != nil {
				return err
			}
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				before, err := client.Status(ctx, &pb.StatusRequest{})
				if err != nil {
					return err
				}
				if force && before.GetWaitingFor() != "" {
					progress(c, "forcing phase %s forward without waiting for: %s", before.GetRotationPhase(), before.GetWaitingFor())
				}
				after, err := client.RotateRoot(ctx, &pb.RotateRootRequest{Force: force})
				if err != nil {
					return err
				}
				what := "the shared root"
				if after.GetKind() == "trust_domain" {
					what = "the root of " + after.GetName()
				}
				progress(c, "rotation of %s: %s -> %s (generation %d -> %d)", what, before.GetRotationPhase(), after.GetRotationPhase(), before.GetGeneration(), after.GetGeneration())
				return printFederationStatus(c.OutOrStdout(), out, after)
			})
		},
	}
	admin.add(c)
	c.Flags().BoolVar(&force, "force", false, "advance even though members still depend on the old root")
	outputFlag(c, &out)
	return c
}

// checkOutput refuses an unknown -o before anything is asked of the
// controller.
func checkOutput(format string) error {
	return printData(io.Discard, format, nil, func(io.Writer) error { return nil })
}

// federationStatus is the JSON and YAML form of a status.
type federationStatus struct {
	Name string `json:"name"`
	Kind string `json:"kind,omitempty"` // "trust_domain": a server's own root

	Generation    uint64                   `json:"generation"`
	RotationPhase string                   `json:"rotation_phase"`
	WaitingFor    string                   `json:"waiting_for"`
	ConfigError   string                   `json:"config_error,omitempty"` // the VirtualMesh file refused
	Roots         []federationRootStatus   `json:"roots"`
	Members       []federationMemberStatus `json:"members"`
}

type federationRootStatus struct {
	SubjectKeyID string `json:"subject_key_id"`
	State        string `json:"state"`
	Subject      string `json:"subject"`
	ExpiresAt    string `json:"expires_at"`
	Certificate  string `json:"certificate"` // PEM
}

type federationMemberStatus struct {
	TrustDomain           string           `json:"trust_domain"`
	Address               string           `json:"address,omitempty"`
	Joined                bool             `json:"joined"`
	IntermediateSerial    string           `json:"intermediate_serial,omitempty"`
	IntermediateExpiresAt string           `json:"intermediate_expires_at,omitempty"`
	RootSubjectKeyID      string           `json:"root_subject_key_id,omitempty"`
	LastContact           string           `json:"last_contact,omitempty"`
	AppliedGeneration     uint64           `json:"applied_generation"`
	Agents                int64            `json:"agents"`
	AgentsCurrent         int64            `json:"agents_current"`
	LiveSVIDsByRoot       map[string]int64 `json:"live_svids_by_root,omitempty"`
	JWTKeyIDs             []string         `json:"jwt_key_ids,omitempty"`
}

func unixTime(s int64) string {
	if s == 0 {
		return ""
	}
	return time.Unix(s, 0).UTC().Format(time.RFC3339)
}

func federationStatusView(st *pb.StatusResponse) federationStatus {
	v := federationStatus{Name: st.GetName(), Kind: st.GetKind(), Generation: st.GetGeneration(), RotationPhase: st.GetRotationPhase(), WaitingFor: st.GetWaitingFor(),
		ConfigError: st.GetConfigError(),
		Roots:       []federationRootStatus{}, Members: []federationMemberStatus{}}
	for _, r := range st.GetRoots() {
		rv := federationRootStatus{SubjectKeyID: r.GetSubjectKeyId(), State: r.GetState(), ExpiresAt: unixTime(r.GetExpiresAt())}
		if c, err := x509.ParseCertificate(r.GetCertificate()); err == nil {
			rv.Subject = c.Subject.String()
			rv.Certificate = string(pemfile.EncodeCertificates(c))
		}
		v.Roots = append(v.Roots, rv)
	}
	for _, m := range st.GetMembers() {
		v.Members = append(v.Members, federationMemberStatus{
			TrustDomain: m.GetTrustDomain(), Address: m.GetAddress(), Joined: m.GetJoined(),
			IntermediateSerial: m.GetIntermediateSerial(), IntermediateExpiresAt: unixTime(m.GetIntermediateExpiresAt()),
			RootSubjectKeyID: m.GetRootSubjectKeyId(), LastContact: unixTime(m.GetLastContact()),
			AppliedGeneration: m.GetAppliedGeneration(), Agents: m.GetAgents(), AgentsCurrent: m.GetAgentsCurrent(),
			LiveSVIDsByRoot: m.GetLiveSvidsByRoot(), JWTKeyIDs: m.GetJwtKeyIds(),
		})
	}
	return v
}

func printFederationStatus(w io.Writer, format string, st *pb.StatusResponse) error {
	v := federationStatusView(st)
	return printData(w, format, v, func(w io.Writer) error {
		kind := "VirtualMesh"
		if v.Kind == "trust_domain" {
			kind = "Trust domain"
		}
		fmt.Fprintf(w, "%s %s, generation %d, rotation phase %s\n", kind, v.Name, v.Generation, v.RotationPhase)
		fmt.Fprintf(w, "waiting for: %s\n", orDash(v.WaitingFor))
		if v.ConfigError != "" {
			fmt.Fprintf(w, "VirtualMesh file refused, the one read before stays in use: %s\n", v.ConfigError)
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ROOT (SUBJECT KEY ID)\tSTATE\tEXPIRES\tSUBJECT")
		for _, r := range v.Roots {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.SubjectKeyID, r.State, r.ExpiresAt, r.Subject)
		}
		fmt.Fprintln(tw)
		// A server's own root has no members passing JWT-SVID keys on.
		jwtColumn := v.Kind != "trust_domain"
		header := "MEMBER\tADDRESS\tJOINED\tINTERMEDIATE\tEXPIRES\tROOT\tLAST CONTACT\tAPPLIED\tAGENTS CURRENT\tLIVE SVIDS BY ROOT"
		if jwtColumn {
			header += "\tJWT KEYS"
		}
		fmt.Fprintln(tw, header)
		for _, m := range v.Members {
			joined, agents := "no", "-"
			if m.Joined {
				joined, agents = "yes", fmt.Sprintf("%d/%d", m.AgentsCurrent, m.Agents)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", m.TrustDomain, orDash(m.Address), joined,
				orDash(m.IntermediateSerial), orDash(m.IntermediateExpiresAt), orDash(short(m.RootSubjectKeyID)),
				orDash(m.LastContact), generationText(m), agents, liveText(m.LiveSVIDsByRoot))
			if jwtColumn {
				fmt.Fprintf(tw, "\t%d", len(m.JWTKeyIDs))
			}
			fmt.Fprintln(tw)
		}
		return tw.Flush()
	})
}

// short abbreviates a subject key ID for the table; JSON has it whole.
func short(skid string) string {
	if len(skid) > 12 {
		return skid[:12]
	}
	return skid
}

func generationText(m federationMemberStatus) string {
	if !m.Joined {
		return "-"
	}
	return fmt.Sprint(m.AppliedGeneration)
}

func liveText(live map[string]int64) string {
	keys := make([]string, 0, len(live))
	for k := range live {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s:%d", short(k), live[k]))
	}
	return orDash(strings.Join(parts, ","))
}
