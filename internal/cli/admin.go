package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/duration"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func init() {
	register(newTokenCommand)
	register(newEntryCommand)
	register(newBundleCommand)
	register(newAuditCommand)
	register(newNodeCommand)
}

// adminFlags is the connection to a server's admin socket.
type adminFlags struct{ socket string }

func (a *adminFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&a.socket, "admin-socket", os.Getenv("MESHFED_ADMIN_SOCKET"), "the server's admin socket (default $MESHFED_ADMIN_SOCKET)")
}

// call dials the admin socket, runs f with a bounded context, and turns a
// gRPC status into one line that names the server's reason.
func (a *adminFlags) call(c *cobra.Command, f func(ctx context.Context, client pb.AdminClient) error) error {
	if a.socket == "" {
		return usagef("give --admin-socket PATH (the server's --admin-socket) or set MESHFED_ADMIN_SOCKET")
	}
	return callSocket(c, a.socket, "is the server running?", func(ctx context.Context, conn *grpc.ClientConn) error {
		return f(ctx, pb.NewAdminClient(conn))
	})
}

// unixTarget is the gRPC target of a unix socket path, made absolute: in
// "unix://dir/admin.sock" gRPC would read dir as the authority.
func unixTarget(socket string) (string, error) {
	path, err := filepath.Abs(socket)
	if err != nil {
		return "", err
	}
	return "unix://" + path, nil
}

// callSocket dials a daemon's admin socket, runs f with a bounded context,
// and turns a gRPC status into one line with the daemon's reason; hint says
// what to check when the socket is not there.
func callSocket(c *cobra.Command, socket, hint string, f func(ctx context.Context, conn *grpc.ClientConn) error) error {
	if _, err := os.Stat(socket); err != nil {
		return fmt.Errorf("admin socket %s: %w; %s", socket, err, hint)
	}
	target, err := unixTarget(socket)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(c.Context(), 30*time.Second)
	defer cancel()
	if err := f(ctx, conn); err != nil {
		if st, ok := status.FromError(err); ok {
			return fmt.Errorf("%s (%s)", st.Message(), st.Code())
		}
		return err
	}
	return nil
}

func newTokenCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "token",
		Short: "One-time join tokens that let an agent attest to a server",
		Long: `A join token lets one agent attest to the server once, as the SPIFFE ID the
token was made for. The server keeps only the token's hash; the token is shown
once, when it is made.`,
		Example: `  meshfed token create --admin-socket east/admin.sock --spiffe-id spiffe://east.example/node/host-1
  meshfed token list --admin-socket east/admin.sock
  meshfed token revoke --admin-socket east/admin.sock --spiffe-id spiffe://east.example/node/host-1`,
	}
	var (
		admin adminFlags
		id    string
		ttl   time.Duration
	)
	create := &cobra.Command{
		Use:   "create --admin-socket PATH --spiffe-id ID",
		Short: "Create a join token; prints the token and nothing else on stdout",
		Long: `Create a one-time join token for an agent that will attest as --spiffe-id.
Only the token is printed on stdout, so scripts can capture it:
  TOKEN=$(meshfed token create --admin-socket east/admin.sock --spiffe-id spiffe://east.example/node/a)`,
		Example: `  meshfed token create --admin-socket east/admin.sock --spiffe-id spiffe://east.example/node/host-1 --ttl 10m`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				resp, err := client.CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{SpiffeId: id, TtlSeconds: int64(ttl / time.Second)})
				if err != nil {
					return err
				}
				fmt.Fprintln(c.OutOrStdout(), resp.GetToken())
				progress(c, "join token %s for %s, valid until %s, usable once", resp.GetId(), id, time.Unix(resp.GetExpiresAt(), 0).UTC().Format(time.RFC3339))
				return nil
			})
		},
	}
	admin.add(create)
	create.Flags().StringVar(&id, "spiffe-id", "", "SPIFFE ID the agent attests as, e.g. spiffe://east.example/node/host-1")
	create.Flags().Var(newTTL(&ttl, 0), "ttl", "how long the token can be used (default: the server's, 1h)")
	required(create, "spiffe-id")
	c.AddCommand(create, newTokenList(), newTokenRevoke())
	return c
}

func newTokenList() *cobra.Command {
	var (
		admin   adminFlags
		id, out string
	)
	c := &cobra.Command{
		Use:   "list --admin-socket PATH [--spiffe-id ID]",
		Short: "List the join tokens that could still attest a node",
		Long: `List the join tokens not used yet and not expired. The server keeps only
their hashes, so a token is named by its hash ("sha256:" and 8 hex digits,
as 'token create' and the server's logs name it), never shown again.`,
		Example: `  meshfed token list --admin-socket east/admin.sock --spiffe-id spiffe://east.example/node/host-1`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				resp, err := client.ListJoinTokens(ctx, &pb.ListJoinTokensRequest{SpiffeId: id})
				if err != nil {
					return err
				}
				raw, _ := json.Marshal(resp.GetTokens())
				var v any
				json.Unmarshal(raw, &v)
				return printData(c.OutOrStdout(), out, map[string]any{"tokens": v}, func(w io.Writer) error {
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "TOKEN\tSPIFFE ID\tCREATED\tEXPIRES")
					for _, t := range resp.GetTokens() {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.GetId(), t.GetSpiffeId(), time.Unix(t.GetCreatedAt(), 0).UTC().Format(time.RFC3339), time.Unix(t.GetExpiresAt(), 0).UTC().Format(time.RFC3339))
					}
					return tw.Flush()
				})
			})
		},
	}
	admin.add(c)
	c.Flags().StringVar(&id, "spiffe-id", "", "only the tokens for this SPIFFE ID")
	outputFlag(c, &out)
	return c
}

func newTokenRevoke() *cobra.Command {
	var (
		admin       adminFlags
		id, tokenID string
	)
	c := &cobra.Command{
		Use:   "revoke --admin-socket PATH --spiffe-id ID [--token sha256:XXXXXXXX]",
		Short: "Revoke unused join tokens (one that leaked before it was used)",
		Long: `Delete the unused join tokens of --spiffe-id, or only the one --token names
(as 'token list' shows it), so that none of them can attest a node. A token
already used is not touched: the node it attested is evicted with 'meshfed
node evict'.`,
		Example: `  meshfed token revoke --admin-socket east/admin.sock --spiffe-id spiffe://east.example/node/host-1 --token sha256:1f2e3d4c`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				resp, err := client.RevokeJoinTokens(ctx, &pb.RevokeJoinTokensRequest{SpiffeId: id, Id: tokenID})
				if err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "revoked %d join token(s) of %s\n", resp.GetRevoked(), id)
				return nil
			})
		},
	}
	admin.add(c)
	c.Flags().StringVar(&id, "spiffe-id", "", "the SPIFFE ID the tokens were made for")
	c.Flags().StringVar(&tokenID, "token", "", "only this token, by the id 'token list' shows (sha256:...)")
	required(c, "spiffe-id")
	return c
}

func newEntryCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "entry",
		Short: "Registration entries: which workloads on which node get which SPIFFE ID",
		Long: `A registration entry maps a parent (an agent's node SPIFFE ID) and selectors
(how the agent recognises the workload: unix:uid:1000, unix:gid:1000,
unix:path:/usr/bin/app) to the SPIFFE ID the workload gets, its SVID lifetime,
extra DNS names and the foreign trust domains whose bundles it receives.`,
		Example: `  meshfed entry create --admin-socket east/admin.sock --parent-id spiffe://east.example/node/host-1 \
    --spiffe-id spiffe://east.example/ns/default/sa/reviews --selector unix:uid:1000
  meshfed entry list --admin-socket east/admin.sock`,
	}
	c.AddCommand(newEntryCreate(), newEntryUpdate(), newEntryList(), newEntryShow(), newEntryDelete())
	return c
}

// entryFlags are an entry's fields as flags, for create and update.
type entryFlags struct {
	parent, id               string
	selectors, dns, federate []string
	ttl                      time.Duration
	admin                    bool
}

// add defines the flags on c; for update, a list flag replaces the list.
func (f *entryFlags) add(c *cobra.Command, update bool) {
	list, ttlDefault := "(repeatable)", "default: the server's"
	if update {
		list, ttlDefault = `(repeatable; replaces them all; "" for none)`, "0: the server's"
	}
	c.Flags().StringVar(&f.parent, "parent-id", "", "SPIFFE ID of the agent (node) that serves the workload")
	c.Flags().StringVar(&f.id, "spiffe-id", "", "SPIFFE ID the workload gets")
	c.Flags().StringSliceVar(&f.selectors, "selector", nil, "TYPE:VALUE the workload must match "+strings.Replace(list, `; "" for none`, "", 1))
	c.Flags().Var(newTTL(&f.ttl, 0), "x509-svid-ttl", "lifetime of the workload's X.509-SVIDs ("+ttlDefault+")")
	c.Flags().StringSliceVar(&f.dns, "dns", nil, "extra DNS name in the SVID "+list)
	c.Flags().StringSliceVar(&f.federate, "federates-with", nil, "foreign trust domain whose bundle the workload receives "+list)
	c.Flags().BoolVar(&f.admin, "admin", false, "the workload may call the admin API with its SVID")
}

// printEntry prints e as 'entry show' does.
func printEntry(c *cobra.Command, out string, e *pb.Entry) error {
	return printData(c.OutOrStdout(), out, entryJSON(e), func(w io.Writer) error {
		return writeEntry(w, e)
	})
}

func newEntryCreate() *cobra.Command {
	var (
		admin adminFlags
		f     entryFlags
		out   string
	)
	c := &cobra.Command{
		Use:   "create --admin-socket PATH --parent-id ID --spiffe-id ID --selector TYPE:VALUE",
		Short: "Create a registration entry",
		Long: `Create a registration entry. Selectors are TYPE:VALUE, where the value may
itself hold colons: unix:uid:1000 is type "unix", value "uid:1000". A workload
must match every selector of an entry to get its SPIFFE ID.`,
		Example: `  meshfed entry create --admin-socket east/admin.sock --parent-id spiffe://east.example/node/host-1 \
    --spiffe-id spiffe://east.example/ns/default/sa/reviews --selector unix:uid:1000 --federates-with west.example`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			e := &pb.Entry{ParentId: f.parent, SpiffeId: f.id, X509SvidTtlSeconds: int64(f.ttl / time.Second), DnsNames: f.dns, FederatesWith: f.federate, Admin: f.admin}
			var err error
			if e.Selectors, err = selectorFlags(f.selectors); err != nil {
				return err
			}
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				created, err := client.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: e})
				if err != nil {
					return err
				}
				return printEntry(c, out, created)
			})
		},
	}
	admin.add(c)
	f.add(c, false)
	outputFlag(c, &out)
	required(c, "parent-id", "spiffe-id", "selector")
	return c
}

// selectorFlags parses --selector values.
func selectorFlags(values []string) ([]*pb.Selector, error) {
	var out []*pb.Selector
	for _, s := range values {
		typ, val, ok := strings.Cut(s, ":")
		if !ok || typ == "" || val == "" {
			return nil, usagef("--selector %q: want TYPE:VALUE, e.g. unix:uid:1000", s)
		}
		out = append(out, &pb.Selector{Type: typ, Value: val})
	}
	return out, nil
}

func newEntryUpdate() *cobra.Command {
	var (
		admin adminFlags
		f     entryFlags
		out   string
	)
	c := &cobra.Command{
		Use:   "update ID --admin-socket PATH [--spiffe-id ID] [--parent-id ID] [--selector TYPE:VALUE]... [--dns NAME]... [--federates-with TD]... [--x509-svid-ttl D] [--admin=BOOL]",
		Short: "Change a registration entry in place",
		Long: `Change a registration entry, keeping its ID. Each flag given replaces that
field (a repeatable flag replaces the whole list; --dns "" and
--federates-with "" empty it); the fields not given stay as they are. The
entry is read, changed and written back only if nobody changed it in
between (else: read it again and retry). Agents get the change at once: a
new SPIFFE ID, DNS names or TTL gets the workload a new SVID, new selectors
or federated trust domains apply at its next call.`,
		Example: `  meshfed entry update 9f2c4e1ab0d7 --admin-socket east/admin.sock --dns reviews.default.svc --dns reviews.east.example
  meshfed entry update 9f2c4e1ab0d7 --admin-socket east/admin.sock --federates-with ""`,
		Args: exactArgs(1, "one entry ID"),
		RunE: func(c *cobra.Command, args []string) error {
			fs := c.Flags()
			changed := false
			for _, name := range []string{"parent-id", "spiffe-id", "selector", "x509-svid-ttl", "dns", "federates-with", "admin"} {
				changed = changed || fs.Changed(name)
			}
			if !changed {
				return usagef("nothing to change: give at least one of --spiffe-id, --parent-id, --selector, --dns, --federates-with, --x509-svid-ttl, --admin")
			}
			sels, err := selectorFlags(f.selectors)
			if err != nil {
				return err
			}
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				e, err := client.GetEntry(ctx, &pb.GetEntryRequest{Id: args[0]})
				if err != nil {
					return err
				}
				rev := e.GetRevision()
				if fs.Changed("parent-id") {
					e.ParentId = f.parent
				}
				if fs.Changed("spiffe-id") {
					e.SpiffeId = f.id
				}
				if fs.Changed("selector") {
					e.Selectors = sels
				}
				if fs.Changed("x509-svid-ttl") {
					e.X509SvidTtlSeconds = int64(f.ttl / time.Second)
				}
				if fs.Changed("dns") {
					e.DnsNames = nonEmpty(f.dns)
				}
				if fs.Changed("federates-with") {
					e.FederatesWith = nonEmpty(f.federate)
				}
				if fs.Changed("admin") {
					e.Admin = f.admin
				}
				updated, err := client.UpdateEntry(ctx, &pb.UpdateEntryRequest{Entry: e, IfRevision: rev})
				if err != nil {
					return err
				}
				return printEntry(c, out, updated)
			})
		},
	}
	admin.add(c)
	f.add(c, true)
	outputFlag(c, &out)
	return c
}

// nonEmpty drops the empty strings of a list flag, so that --dns "" is no
// names.
func nonEmpty(values []string) []string {
	out := make([]string, 0, len(values))
	for _, v := range values {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

func newEntryList() *cobra.Command {
	var (
		admin           adminFlags
		parent, id, out string
	)
	c := &cobra.Command{
		Use:     "list --admin-socket PATH",
		Short:   "List registration entries",
		Long:    `List registration entries, optionally only those of one parent or one SPIFFE ID.`,
		Example: `  meshfed entry list --admin-socket east/admin.sock --parent-id spiffe://east.example/node/host-1 -o json`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				resp, err := client.ListEntries(ctx, &pb.ListEntriesRequest{ParentId: parent, SpiffeId: id})
				if err != nil {
					return err
				}
				list := make([]map[string]any, 0, len(resp.GetEntries()))
				for _, e := range resp.GetEntries() {
					list = append(list, entryJSON(e))
				}
				return printData(c.OutOrStdout(), out, map[string]any{"entries": list}, func(w io.Writer) error {
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "ID\tSPIFFE ID\tPARENT\tSELECTORS\tFEDERATES WITH")
					for _, e := range resp.GetEntries() {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.GetId(), e.GetSpiffeId(), e.GetParentId(), selectorText(e), orDash(strings.Join(e.GetFederatesWith(), ",")))
					}
					return tw.Flush()
				})
			})
		},
	}
	admin.add(c)
	c.Flags().StringVar(&parent, "parent-id", "", "only entries of this parent")
	c.Flags().StringVar(&id, "spiffe-id", "", "only entries for this SPIFFE ID")
	outputFlag(c, &out)
	return c
}

func newEntryShow() *cobra.Command {
	var (
		admin adminFlags
		out   string
	)
	c := &cobra.Command{
		Use:     "show ID --admin-socket PATH",
		Short:   "Show one registration entry",
		Long:    `Show one registration entry by its ID (as 'entry list' prints it).`,
		Example: `  meshfed entry show 9f2c4e1ab0d7 --admin-socket east/admin.sock`,
		Args:    exactArgs(1, "one entry ID"),
		RunE: func(c *cobra.Command, args []string) error {
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				e, err := client.GetEntry(ctx, &pb.GetEntryRequest{Id: args[0]})
				if err != nil {
					return err
				}
				return printEntry(c, out, e)
			})
		},
	}
	admin.add(c)
	outputFlag(c, &out)
	return c
}

func newEntryDelete() *cobra.Command {
	var admin adminFlags
	c := &cobra.Command{
		Use:     "delete ID --admin-socket PATH",
		Short:   "Delete a registration entry",
		Long:    `Delete a registration entry. Agents drop the workload's identity at their next update.`,
		Example: `  meshfed entry delete 9f2c4e1ab0d7 --admin-socket east/admin.sock`,
		Args:    exactArgs(1, "one entry ID"),
		RunE: func(c *cobra.Command, args []string) error {
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				if _, err := client.DeleteEntry(ctx, &pb.DeleteEntryRequest{Id: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "deleted entry %s\n", args[0])
				return nil
			})
		},
	}
	admin.add(c)
	return c
}

func entryJSON(e *pb.Entry) map[string]any {
	sel := make([]string, 0, len(e.GetSelectors()))
	for _, s := range e.GetSelectors() {
		sel = append(sel, s.GetType()+":"+s.GetValue())
	}
	return map[string]any{
		"id": e.GetId(), "spiffe_id": e.GetSpiffeId(), "parent_id": e.GetParentId(), "selectors": sel,
		"x509_svid_ttl": duration.Format(time.Duration(e.GetX509SvidTtlSeconds()) * time.Second),
		"dns_names":     e.GetDnsNames(), "federates_with": e.GetFederatesWith(), "admin": e.GetAdmin(),
		"revision": e.GetRevision(), "created_at": time.Unix(e.GetCreatedAt(), 0).UTC().Format(time.RFC3339),
	}
}

func writeEntry(w io.Writer, e *pb.Entry) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Entry ID:\t%s\n", e.GetId())
	fmt.Fprintf(tw, "SPIFFE ID:\t%s\n", e.GetSpiffeId())
	fmt.Fprintf(tw, "Parent ID:\t%s\n", e.GetParentId())
	fmt.Fprintf(tw, "Selectors:\t%s\n", selectorText(e))
	ttl := "server default"
	if e.GetX509SvidTtlSeconds() > 0 {
		ttl = duration.Format(time.Duration(e.GetX509SvidTtlSeconds()) * time.Second)
	}
	fmt.Fprintf(tw, "X509-SVID TTL:\t%s\n", ttl)
	fmt.Fprintf(tw, "DNS names:\t%s\n", orDash(strings.Join(e.GetDnsNames(), ", ")))
	fmt.Fprintf(tw, "Federates with:\t%s\n", orDash(strings.Join(e.GetFederatesWith(), ", ")))
	fmt.Fprintf(tw, "Admin:\t%v\n", e.GetAdmin())
	return tw.Flush()
}

func selectorText(e *pb.Entry) string {
	var parts []string
	for _, s := range e.GetSelectors() {
		parts = append(parts, s.GetType()+":"+s.GetValue())
	}
	return strings.Join(parts, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newBundleCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "bundle",
		Short: "This trust domain's bundle and the federated bundles a server holds",
		Long: `Show this trust domain's SPIFFE bundle as the server publishes it, and manage
the bundles of federated trust domains: 'bundle set' installs one out of band
(the first https_spiffe bootstrap, or a domain with no bundle endpoint).`,
		Example: `  meshfed bundle show --admin-socket east/admin.sock > east.json
  meshfed bundle set --admin-socket east/admin.sock --trust-domain west.example --in west.json
  meshfed bundle list --admin-socket east/admin.sock`,
	}
	var admin adminFlags
	var format, showTD string
	show := &cobra.Command{
		Use:   "show --admin-socket PATH [--trust-domain TD]",
		Short: "Print this trust domain's (or a federated one's) SPIFFE bundle",
		Long: `Print the bundle the server publishes at its bundle endpoint, or with
--trust-domain the bundle it holds for that federated trust domain: SPIFFE
bundle JSON by default, or the X.509 authorities as PEM.`,
		Example: `  meshfed bundle show --admin-socket east/admin.sock
  meshfed bundle show --admin-socket east/admin.sock --trust-domain west.example --format pem`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			f, err := bundle.ParseFormat(format)
			if err != nil {
				return usagef("%v", err)
			}
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				b, err := client.GetBundle(ctx, &pb.GetBundleRequest{})
				if err != nil {
					return err
				}
				if showTD == "" || showTD == b.GetTrustDomain() {
					return writeBundle(c.OutOrStdout(), b, f)
				}
				fed, err := client.ListFederatedBundles(ctx, &pb.ListFederatedBundlesRequest{})
				if err != nil {
					return err
				}
				for _, b := range fed.GetBundles() {
					if b.GetTrustDomain() == showTD {
						return writeBundle(c.OutOrStdout(), b, f)
					}
				}
				return fmt.Errorf("the server holds no bundle for %s; see 'meshfed bundle list'", showTD)
			})
		},
	}
	admin.add(show)
	show.Flags().StringVar(&format, "format", "spiffe", "spiffe (JSON) or pem")
	show.Flags().StringVar(&showTD, "trust-domain", "", "a federated trust domain (default: the server's own)")

	var listAdmin adminFlags
	var listOut string
	list := &cobra.Command{
		Use:   "list --admin-socket PATH",
		Short: "List the federated bundles the server holds, and how fetching them goes",
		Long: `List the bundles of foreign trust domains the server holds and hands to agents,
and for each one configured in federation.federates_with, its bundle endpoint,
the last fetch and its error, and when the next fetch is due.`,
		Example: `  meshfed bundle list --admin-socket east/admin.sock
  meshfed bundle list --admin-socket east/admin.sock -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			return listAdmin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				resp, err := client.ListFederatedBundles(ctx, &pb.ListFederatedBundlesRequest{})
				if err != nil {
					return err
				}
				rows := bundleRows(resp)
				return printData(c.OutOrStdout(), listOut, map[string]any{"bundles": rows}, func(w io.Writer) error {
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "TRUST DOMAIN\tSEQUENCE\tX.509 AUTHORITIES\tENDPOINT\tLAST FETCH\tNEXT FETCH\tPUSH\tERROR")
					for _, r := range rows {
						push := "-"
						if r.Push {
							push = "yes"
						}
						fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", r.TrustDomain, r.Sequence, r.Authorities,
							orDash(r.Endpoint), orDash(r.LastSuccess), orDash(r.NextRefresh), push, orDash(r.LastError))
					}
					return tw.Flush()
				})
			})
		},
	}
	listAdmin.add(list)
	outputFlag(list, &listOut)

	var refreshAdmin adminFlags
	refresh := &cobra.Command{
		Use:   "refresh TRUST-DOMAIN --admin-socket PATH",
		Short: "Fetch a federated trust domain's bundle from its endpoint now",
		Long: `Fetch the bundle of a trust domain listed in federation.federates_with from its
bundle endpoint now, instead of at the time its refresh hint gives. A failed
fetch changes nothing: the last good bundle stays.`,
		Example: `  meshfed bundle refresh west.example --admin-socket east/admin.sock`,
		Args:    exactArgs(1, "one trust domain"),
		RunE: func(c *cobra.Command, args []string) error {
			return refreshAdmin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				p, err := client.RefreshFederatedBundle(ctx, &pb.RefreshFederatedBundleRequest{TrustDomain: args[0]})
				if err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "fetched the bundle of %s from %s (sequence %d, %d X.509 authorities)\n",
					p.GetTrustDomain(), p.GetBundleEndpointUrl(), p.GetSequence(), p.GetX509Authorities())
				return nil
			})
		},
	}
	refreshAdmin.add(refresh)

	var setAdmin adminFlags
	var setTD, setIn string
	set := &cobra.Command{
		Use:   "set --admin-socket PATH --trust-domain TD --in FILE",
		Short: "Install a federated trust domain's bundle out of band",
		Long: `Install the bundle of a foreign trust domain (SPIFFE JSON or PEM) so the
server trusts it and hands it to the workloads whose entries federate with it.
This is how an https_spiffe bundle endpoint is bootstrapped: its first bundle
must come out of band.`,
		Example: `  meshfed bundle set --admin-socket east/admin.sock --trust-domain west.example --in west.json`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			data, err := pemfile.ReadFile(setIn, bundle.MaxBytes)
			if err != nil {
				return err
			}
			td, err := trustDomainArg(setTD)
			if err != nil {
				return err
			}
			b, err := bundle.Parse(td, data)
			if err != nil {
				return fmt.Errorf("%s: %w", setIn, err)
			}
			raw, err := b.Marshal()
			if err != nil {
				return err
			}
			return setAdmin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				got, err := client.SetFederatedBundle(ctx, &pb.Bundle{TrustDomain: td.Name(), SpiffeBundle: raw})
				if err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "set the bundle of %s (%d X.509 authorities)\n", got.GetTrustDomain(), len(b.X509Authorities()))
				return nil
			})
		},
	}
	setAdmin.add(set)
	set.Flags().StringVar(&setTD, "trust-domain", "", "the foreign trust domain")
	set.Flags().StringVar(&setIn, "in", "", "bundle file (SPIFFE JSON or PEM)")
	required(set, "trust-domain", "in")

	var delAdmin adminFlags
	del := &cobra.Command{
		Use:     "delete TRUST-DOMAIN --admin-socket PATH",
		Short:   "Stop trusting a federated trust domain",
		Long:    `Delete a federated bundle: the server and its agents stop trusting that trust domain.`,
		Example: `  meshfed bundle delete west.example --admin-socket east/admin.sock`,
		Args:    exactArgs(1, "one trust domain"),
		RunE: func(c *cobra.Command, args []string) error {
			return delAdmin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				if _, err := client.DeleteFederatedBundle(ctx, &pb.DeleteFederatedBundleRequest{TrustDomain: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "deleted the bundle of %s\n", args[0])
				return nil
			})
		},
	}
	delAdmin.add(del)
	c.AddCommand(show, list, set, del, refresh)
	return c
}

// bundleRow is one line of 'bundle list'.
type bundleRow struct {
	TrustDomain string `json:"trust_domain"`
	Sequence    uint64 `json:"sequence"`
	Authorities int    `json:"x509_authorities"`
	Source      string `json:"source"`
	Endpoint    string `json:"bundle_endpoint_url,omitempty"`
	Profile     string `json:"bundle_endpoint_profile,omitempty"`
	LastSuccess string `json:"last_success,omitempty"`
	NextRefresh string `json:"next_refresh,omitempty"`
	Push        bool   `json:"push"`
	LastError   string `json:"last_error,omitempty"`
}

// bundleRows joins the stored bundles with the fetcher's peers, so a peer
// that never fetched (no bundle yet) is listed too.
func bundleRows(resp *pb.ListFederatedBundlesResponse) []bundleRow {
	byTD := map[string]int{}
	var rows []bundleRow
	for _, b := range resp.GetBundles() {
		n := 0
		if td, err := spiffeid.TrustDomainFromString(b.GetTrustDomain()); err == nil {
			if parsed, err := bundle.Parse(td, b.GetSpiffeBundle()); err == nil {
				n = len(parsed.X509Authorities())
			}
		}
		source := "bundle set"
		if b.GetAllWorkloads() {
			source = "virtual_mesh"
		}
		byTD[b.GetTrustDomain()] = len(rows)
		rows = append(rows, bundleRow{TrustDomain: b.GetTrustDomain(), Sequence: b.GetSequence(), Authorities: n, Source: source})
	}
	stamp := func(sec int64) string {
		if sec == 0 {
			return ""
		}
		return time.Unix(sec, 0).UTC().Format(time.RFC3339)
	}
	for _, p := range resp.GetPeers() {
		i, ok := byTD[p.GetTrustDomain()]
		if !ok {
			i = len(rows)
			rows = append(rows, bundleRow{TrustDomain: p.GetTrustDomain()})
		}
		r := &rows[i]
		r.Source, r.Endpoint, r.Profile = p.GetSource(), p.GetBundleEndpointUrl(), p.GetBundleEndpointProfile()
		r.LastSuccess, r.NextRefresh, r.LastError = stamp(p.GetLastSuccess()), stamp(p.GetNextRefresh()), p.GetLastError()
		r.Push = p.GetPush()
	}
	return rows
}

func writeBundle(w io.Writer, b *pb.Bundle, f bundle.Format) error {
	td, err := spiffeid.TrustDomainFromString(b.GetTrustDomain())
	if err != nil {
		return err
	}
	parsed, err := bundle.Parse(td, b.GetSpiffeBundle())
	if err != nil {
		return err
	}
	data, err := bundle.Marshal(parsed, f)
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

func newAuditCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "audit",
		Short: "The audit log of issued certificates",
		Long: `Every certificate a server issues is recorded: serial, SPIFFE ID, the kind of
credential the caller presented, who the caller was, which server signed, and
when it expires.`,
		Example: `  meshfed audit list --admin-socket east/admin.sock --spiffe-id spiffe://east.example/ns/default/sa/reviews`,
	}
	var (
		admin   adminFlags
		id, out string
		since   time.Duration
		limit   int
	)
	list := &cobra.Command{
		Use:     "list --admin-socket PATH",
		Short:   "List issued certificates, newest first",
		Long:    `List issued certificates, newest first, optionally for one SPIFFE ID or since a time ago.`,
		Example: `  meshfed audit list --admin-socket east/admin.sock --since 1h -o json`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			req := &pb.ListIssuedRequest{SpiffeId: id, Limit: int32(limit)}
			if since > 0 {
				req.Since = time.Now().Add(-since).Unix()
			}
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				resp, err := client.ListIssued(ctx, req)
				if err != nil {
					return err
				}
				type row struct {
					Serial     string `json:"serial"`
					SPIFFEID   string `json:"spiffe_id"`
					Credential string `json:"credential"`
					Caller     string `json:"caller"`
					ServerID   string `json:"server_id"`
					IssuedAt   string `json:"issued_at"`
					NotAfter   string `json:"not_after"`
					RootKeyID  string `json:"root_key_id,omitempty"`
				}
				var rows []row
				for _, r := range resp.GetIssued() {
					rows = append(rows, row{r.GetSerial(), r.GetSpiffeId(), r.GetCredentialKind(), r.GetCaller(), r.GetServerId(),
						time.Unix(r.GetIssuedAt(), 0).UTC().Format(time.RFC3339), time.Unix(r.GetNotAfter(), 0).UTC().Format(time.RFC3339), r.GetRootKeyId()})
				}
				return printData(c.OutOrStdout(), out, map[string]any{"issued": rows}, func(w io.Writer) error {
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "ISSUED\tSPIFFE ID\tCREDENTIAL\tCALLER\tSERVER\tNOT AFTER\tSERIAL")
					for _, r := range rows {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.IssuedAt, r.SPIFFEID, r.Credential, r.Caller, r.ServerID, r.NotAfter, r.Serial)
					}
					return tw.Flush()
				})
			})
		},
	}
	admin.add(list)
	list.Flags().StringVar(&id, "spiffe-id", "", "only certificates for this SPIFFE ID")
	list.Flags().Var(newTTL(&since, 0), "since", "only certificates issued within this long, e.g. 1h")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many rows (up to 1000)")
	outputFlag(list, &out)
	c.AddCommand(list)
	return c
}

func newNodeCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "node",
		Short: "Agents (nodes) that attested to a server: list, evict, ban",
		Long: `Agents that attested to the server: their SPIFFE ID, how they attested, and their node SVID.

A node that attested with a join token has one node SVID in use at a time:
after a renewal the server takes the new SVID from its first use and refuses
the old one (and any copy of it) from then on, so a node SVID copied off a
host stops working at the node's next renewal, and the node itself is
refused (and logs so) if the copy renewed first. Nodes attested with a
service-account token (agents in sidecar mode) share their identity with the
other replicas of their workload and are not held to one SVID.

'meshfed node evict' deletes a node's record: every server of the trust
domain refuses its SVIDs from its next call (within a second on the others),
its Watch stream ends, and it must attest again with a new join token (an
agent reads its --join-token-file again for one, without a restart); its
SVIDs from before stay refused. 'meshfed node ban' refuses it the same way
and refuses its attestation too, until 'meshfed node evict' lifts the ban.
Workload SVIDs the node already handed out stay valid until they expire.`,
		Example: `  meshfed node list --admin-socket east/admin.sock
  meshfed node evict --admin-socket east/admin.sock --spiffe-id spiffe://east.example/node/host-1
  meshfed node ban --admin-socket east/admin.sock --spiffe-id spiffe://east.example/node/host-1`,
	}
	var (
		admin adminFlags
		out   string
	)
	list := &cobra.Command{
		Use:   "list --admin-socket PATH",
		Short: "List attested agents",
		Long: `List the agents that attested to the server. STATE is "active", "renewed"
(its last renewal's SVID is not in use yet) or "banned".`,
		Example: `  meshfed node list --admin-socket east/admin.sock -o json`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				resp, err := client.ListNodes(ctx, &pb.ListNodesRequest{})
				if err != nil {
					return err
				}
				raw, _ := json.Marshal(resp.GetNodes())
				var v any
				json.Unmarshal(raw, &v)
				return printData(c.OutOrStdout(), out, map[string]any{"nodes": v}, func(w io.Writer) error {
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "SPIFFE ID\tATTESTED\tCREDENTIAL\tSVID EXPIRES\tSTATE")
					for _, n := range resp.GetNodes() {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.GetSpiffeId(), time.Unix(n.GetAttestedAt(), 0).UTC().Format(time.RFC3339),
							n.GetCredentialKind(), time.Unix(n.GetExpiresAt(), 0).UTC().Format(time.RFC3339), nodeState(n))
					}
					return tw.Flush()
				})
			})
		},
	}
	admin.add(list)
	outputFlag(list, &out)
	c.AddCommand(list, newNodeEvict(), newNodeBan(), newNodePurge())
	return c
}

// nodeState is the STATE column of 'meshfed node list'.
func nodeState(n *pb.AttestedNode) string {
	switch {
	case n.GetBannedAt() != 0:
		return "banned"
	case n.GetNewSerial() != "":
		return "renewed"
	}
	return "active"
}

func newNodeEvict() *cobra.Command {
	var (
		admin adminFlags
		id    string
	)
	c := &cobra.Command{
		Use:   "evict --admin-socket PATH --spiffe-id ID",
		Short: "Evict a node: refuse its SVIDs until it attests again",
		Long: `Delete a node's record, lifting a ban. Every server of the trust domain
refuses the node's SVIDs from its next call, and it must attest again with a
new join token ('meshfed token create --spiffe-id ID'). Its SVIDs from before
the eviction stay refused, so evicting a node whose key leaked and attesting
it again shuts out the copy.`,
		Example: `  meshfed node evict --admin-socket east/admin.sock --spiffe-id spiffe://east.example/node/host-1`,
		Args:    exactArgs(0, "no arguments (the node is --spiffe-id)"),
		RunE: func(c *cobra.Command, _ []string) error {
			if id == "" {
				return usagef("--spiffe-id is required: the node to evict (see 'meshfed node list')")
			}
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				if _, err := client.EvictNode(ctx, &pb.EvictNodeRequest{SpiffeId: id}); err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "evicted node %s\n", id)
				return nil
			})
		},
	}
	admin.add(c)
	c.Flags().StringVar(&id, "spiffe-id", "", "the node's SPIFFE ID")
	return c
}

func newNodePurge() *cobra.Command {
	var (
		admin  adminFlags
		out    string
		after  time.Duration
		dryRun bool
	)
	c := &cobra.Command{
		Use:   "purge --admin-socket PATH [--expired-for 720h] [--dry-run]",
		Short: "Delete the records of nodes whose SVIDs all expired long ago",
		Long: `Delete the records of nodes gone for good: every SVID they hold (the one in
use and one a renewal signed) expired more than --expired-for ago, so they
can make no call and would have to attest again anyway. Banned nodes are
kept, so that the ban lasts. --dry-run lists what would go.`,
		Example: `  meshfed node purge --admin-socket east/admin.sock --expired-for 720h --dry-run`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if after < time.Second {
				return usagef("--expired-for %s: give at least 1s", after)
			}
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				resp, err := client.PurgeNodes(ctx, &pb.PurgeNodesRequest{ExpiredForSeconds: int64(after / time.Second), DryRun: dryRun})
				if err != nil {
					return err
				}
				var ids []string
				for _, n := range resp.GetPurged() {
					ids = append(ids, n.GetSpiffeId())
				}
				verb := "purged"
				if dryRun {
					verb = "would purge"
				}
				return printData(c.OutOrStdout(), out, map[string]any{"dry_run": dryRun, "nodes": ids}, func(w io.Writer) error {
					fmt.Fprintf(w, "%s %d node(s)\n", verb, len(ids))
					for _, id := range ids {
						fmt.Fprintf(w, "  %s\n", id)
					}
					return nil
				})
			})
		},
	}
	admin.add(c)
	c.Flags().Var(newTTL(&after, 30*24*time.Hour), "expired-for", "how long ago a node's last SVID must have expired")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be deleted, delete nothing")
	outputFlag(c, &out)
	return c
}

func newNodeBan() *cobra.Command {
	var (
		admin adminFlags
		id    string
	)
	c := &cobra.Command{
		Use:   "ban --admin-socket PATH --spiffe-id ID",
		Short: "Ban a node: refuse its SVIDs and its attestation until it is evicted",
		Long: `Ban a node: every server of the trust domain refuses its SVIDs from its next
call, and refuses it attesting again, with any token, until 'meshfed node
evict' lifts the ban.`,
		Example: `  meshfed node ban --admin-socket east/admin.sock --spiffe-id spiffe://east.example/node/host-1`,
		Args:    exactArgs(0, "no arguments (the node is --spiffe-id)"),
		RunE: func(c *cobra.Command, _ []string) error {
			if id == "" {
				return usagef("--spiffe-id is required: the node to ban (see 'meshfed node list')")
			}
			return admin.call(c, func(ctx context.Context, client pb.AdminClient) error {
				n, err := client.BanNode(ctx, &pb.BanNodeRequest{SpiffeId: id})
				if err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "banned node %s at %s\n", id, time.Unix(n.GetBannedAt(), 0).UTC().Format(time.RFC3339))
				return nil
			})
		},
	}
	admin.add(c)
	c.Flags().StringVar(&id, "spiffe-id", "", "the node's SPIFFE ID")
	return c
}
