package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/policy"
	"github.com/meshfed/meshfed/internal/server"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// The server-side policy commands: apply, list and delete on the server's
// admin socket, as kubectl does them on the API server.

func newPolicyApply() *cobra.Command {
	var (
		admin  adminFlags
		files  []string
		dryRun bool
		output string
	)
	c := &cobra.Command{
		Use:   "apply -f FILE|DIR|- [-f ...] --admin-socket PATH",
		Short: "Store policy on the server; every agent pushes it to its proxies at once",
		Long: `Send Istio security policy - PeerAuthentication, RequestAuthentication and
AuthorizationPolicy YAML, as you would 'kubectl apply -f' it - to the trust
domain's server, which parses and validates every document, checks that the
stored policy with them still forms a valid set, and stores them all or none.

A document is created, or replaces the stored one of the same kind,
namespace and name (a missing namespace is "default"); the replaced one
keeps its creation time, which is what Istio's "oldest policy wins" goes
by. Each line of output says what happened to one document: created,
configured or unchanged. Every agent of the trust domain receives the new
set at once on its stream from the server and pushes it to the proxies
that watch its socket; nothing restarts.

-f takes a file, a directory (its *.yaml, *.yml and *.json files, not its
subdirectories, in name order) or - for stdin, and may be repeated; one
apply sends at most 1 MiB. A bad document fails the whole apply with its
file and line, and nothing is stored. --dry-run validates on the server
and says what would happen without storing anything.`,
		Example: `  meshfed policy apply -f strict.yaml --admin-socket east/admin.sock
  meshfed policy apply -f ./policies -f extra.yaml --dry-run
  cat strict.yaml | meshfed policy apply -f - --admin-socket east/admin.sock`,
		Args: exactArgs(0, "no arguments (give files with -f)"),
		RunE: func(c *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return usagef("give the policy to apply with -f FILE, -f DIR or -f - (stdin)")
			}
			req := &pb.ApplyPoliciesRequest{DryRun: dryRun}
			stdin := false
			for _, f := range files {
				if f == "-" {
					if stdin {
						return usagef("-f - (stdin) can be given once")
					}
					stdin = true
				}
				read, err := readPolicyFiles(c, f)
				if err != nil {
					return err
				}
				req.Files = append(req.Files, read...)
			}
			if len(req.Files) == 0 {
				return fmt.Errorf("policy apply: no *.yaml, *.yml or *.json files in %s", strings.Join(files, ", "))
			}
			if n := proto.Size(req); n > server.MaxRequestBytes {
				return fmt.Errorf("policy apply: the files make %d bytes, more than the %d one apply may send; apply them in several runs", n, server.MaxRequestBytes)
			}
			return policyAdminCall(c, &admin, func(ctx context.Context, client pb.AdminClient) error {
				resp, err := client.ApplyPolicies(ctx, req)
				if err != nil {
					return err
				}
				suffix := ""
				if dryRun {
					suffix = " (dry run)"
				}
				err = printData(c.OutOrStdout(), output, appliedJSON(resp), func(w io.Writer) error {
					for _, p := range resp.GetPolicies() {
						fmt.Fprintf(w, "%s %s/%s %s%s\n", p.GetKind(), p.GetNamespace(), p.GetName(), p.GetResult(), suffix)
					}
					return nil
				})
				changed := 0
				for _, p := range resp.GetPolicies() {
					if p.GetResult() != "unchanged" {
						changed++
					}
				}
				switch {
				case err != nil || dryRun:
				case changed == 0:
					progress(c, "nothing changed: policy revision %d", resp.GetPolicyRevision())
				default:
					progress(c, "policy revision %d: agents push it to their proxies now", resp.GetPolicyRevision())
				}
				return err
			})
		},
	}
	admin.add(c)
	c.Flags().StringArrayVarP(&files, "filename", "f", nil, "policy YAML: a file, a directory or - for stdin (repeatable)")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "validate on the server and show what would change; store nothing")
	outputFlag(c, &output)
	return c
}

func appliedJSON(resp *pb.ApplyPoliciesResponse) map[string]any {
	list := make([]map[string]any, 0, len(resp.GetPolicies()))
	for _, p := range resp.GetPolicies() {
		list = append(list, map[string]any{"kind": p.GetKind(), "namespace": p.GetNamespace(), "name": p.GetName(), "result": p.GetResult()})
	}
	return map[string]any{"policies": list, "policy_revision": resp.GetPolicyRevision()}
}

func newPolicyList() *cobra.Command {
	var (
		admin  adminFlags
		output string
	)
	c := &cobra.Command{
		Use:   "list --admin-socket PATH",
		Short: "List the policy stored on the server",
		Long: `List the Istio security policy documents stored on the server ('meshfed
policy apply'), by kind, namespace and name, with each one's generation (1
when created, one more each time it changed) and creation time. The policy
revision, printed on stderr, moves each time the set changes; proxies
report the revision they enforce. -o json and -o yaml include each
document's YAML as applied.`,
		Example: `  meshfed policy list --admin-socket east/admin.sock
  meshfed policy list --admin-socket east/admin.sock -o yaml`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			return policyAdminCall(c, &admin, func(ctx context.Context, client pb.AdminClient) error {
				resp, err := client.ListPolicies(ctx, &pb.ListPoliciesRequest{})
				if err != nil {
					return err
				}
				list := make([]map[string]any, 0, len(resp.GetPolicies()))
				for _, p := range resp.GetPolicies() {
					list = append(list, map[string]any{
						"kind": p.GetKind(), "namespace": p.GetNamespace(), "name": p.GetName(),
						"generation": p.GetGeneration(), "revision": p.GetRevision(),
						"created_at": msTime(p.GetCreatedAtMs()), "updated_at": msTime(p.GetUpdatedAtMs()),
						"yaml": string(p.GetYaml()),
					})
				}
				err = printData(c.OutOrStdout(), output, map[string]any{"policies": list, "policy_revision": resp.GetPolicyRevision()}, func(w io.Writer) error {
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "KIND\tNAMESPACE\tNAME\tGENERATION\tCREATED")
					for _, p := range resp.GetPolicies() {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", p.GetKind(), p.GetNamespace(), p.GetName(), p.GetGeneration(), msTime(p.GetCreatedAtMs()))
					}
					return tw.Flush()
				})
				if err == nil && output != "json" && output != "yaml" {
					progress(c, "policy revision %d, %d document(s)", resp.GetPolicyRevision(), len(resp.GetPolicies()))
				}
				return err
			})
		},
	}
	admin.add(c)
	outputFlag(c, &output)
	return c
}

// msTime formats Unix milliseconds as RFC 3339 UTC with milliseconds.
func msTime(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

func newPolicyDelete() *cobra.Command {
	var (
		admin          adminFlags
		files          []string
		ignoreNotFound bool
	)
	c := &cobra.Command{
		Use:   "delete (KIND NAMESPACE/NAME | -f FILE|DIR|-) --admin-socket PATH",
		Short: "Delete policy from the server; every agent pushes the change to its proxies",
		Long: `Delete stored policy documents by kind and NAMESPACE/NAME, or, like 'kubectl
delete -f', every document of the files given with -f (read here, not
sent). KIND is PeerAuthentication, RequestAuthentication or
AuthorizationPolicy, in any case, plural, or short (pa, ra, ap). Every agent
of the trust domain receives the new set at once.

A document that is not stored is an error (exit 1) unless
--ignore-not-found is given; the others are deleted all the same.`,
		Example: `  meshfed policy delete PeerAuthentication default/default --admin-socket east/admin.sock
  meshfed policy delete ap foo/allow-sleep
  meshfed policy delete -f strict.yaml --ignore-not-found`,
		RunE: func(c *cobra.Command, args []string) error {
			var targets []*pb.DeletePolicyRequest
			switch {
			case len(files) > 0 && len(args) > 0:
				return usagef("give KIND NAMESPACE/NAME or -f FILE, not both (see '%s --help')", c.CommandPath())
			case len(files) > 0:
				for _, f := range files {
					read, err := readPolicyFiles(c, f)
					if err != nil {
						return err
					}
					for _, pf := range read {
						docs, err := policy.Parse(pf.GetName(), pf.GetData())
						if err != nil {
							return err
						}
						for _, d := range docs {
							targets = append(targets, &pb.DeletePolicyRequest{Kind: string(d.Kind), Namespace: d.Namespace, Name: d.Name})
						}
					}
				}
				if len(targets) == 0 {
					return fmt.Errorf("policy delete: no policy documents in %s", strings.Join(files, ", "))
				}
			case len(args) == 2:
				kind, err := policyKind(args[0])
				if err != nil {
					return err
				}
				ns, name, ok := strings.Cut(args[1], "/")
				if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
					return usagef("%q: give NAMESPACE/NAME, e.g. default/allow-sleep", args[1])
				}
				targets = append(targets, &pb.DeletePolicyRequest{Kind: string(kind), Namespace: ns, Name: name})
			default:
				return usagef("%s takes KIND NAMESPACE/NAME, or -f FILE (see '%s --help')", c.CommandPath(), c.CommandPath())
			}
			return policyAdminCall(c, &admin, func(ctx context.Context, client pb.AdminClient) error {
				var missing []string
				for _, t := range targets {
					ref := fmt.Sprintf("%s %s/%s", t.GetKind(), t.GetNamespace(), t.GetName())
					resp, err := client.DeletePolicy(ctx, t)
					if status.Code(err) == codes.NotFound {
						if !ignoreNotFound {
							missing = append(missing, ref)
						}
						continue
					}
					if err != nil {
						return err
					}
					fmt.Fprintf(c.OutOrStdout(), "%s deleted\n", ref)
					progress(c, "policy revision %d: agents push it to their proxies now", resp.GetPolicyRevision())
				}
				if len(missing) > 0 {
					return fmt.Errorf("policy delete: not stored on the server: %s (--ignore-not-found to accept)", strings.Join(missing, ", "))
				}
				return nil
			})
		},
	}
	admin.add(c)
	c.Flags().StringArrayVarP(&files, "filename", "f", nil, "delete the documents of this file, directory or - for stdin (repeatable)")
	c.Flags().BoolVar(&ignoreNotFound, "ignore-not-found", false, "a document that is not stored is not an error")
	return c
}

// policyKind reads a kind as kubectl users write it.
func policyKind(s string) (policy.Kind, error) {
	k := strings.TrimSuffix(strings.ToLower(s), ".security.istio.io")
	switch k {
	case "peerauthentication", "peerauthentications", "pa":
		return policy.KindPeerAuthentication, nil
	case "requestauthentication", "requestauthentications", "ra":
		return policy.KindRequestAuthentication, nil
	case "authorizationpolicy", "authorizationpolicies", "ap":
		return policy.KindAuthorizationPolicy, nil
	}
	return "", usagef("kind %q: give PeerAuthentication, RequestAuthentication or AuthorizationPolicy (or pa, ra, ap)", s)
}

// readPolicyFiles reads -f's argument: a file, the policy files directly in
// a directory (in name order, as 'kubectl apply -f DIR'), or stdin for "-";
// each bounded by policy.MaxFileSize.
func readPolicyFiles(c *cobra.Command, arg string) ([]*pb.PolicyFile, error) {
	if arg == "-" {
		data, err := readBoundedPolicy(c.InOrStdin(), "stdin")
		if err != nil {
			return nil, err
		}
		return []*pb.PolicyFile{{Name: "stdin", Data: data}}, nil
	}
	st, err := os.Stat(arg)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	paths := []string{arg}
	if st.IsDir() {
		entries, err := os.ReadDir(arg)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		paths = nil
		for _, e := range entries {
			ext := strings.ToLower(filepath.Ext(e.Name()))
			if !e.IsDir() && (ext == ".yaml" || ext == ".yml" || ext == ".json") {
				paths = append(paths, filepath.Join(arg, e.Name()))
			}
		}
		sort.Strings(paths)
		if len(paths) > policy.MaxFiles {
			return nil, fmt.Errorf("policy: %s: more than %d policy files", arg, policy.MaxFiles)
		}
	}
	var out []*pb.PolicyFile
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		data, err := readBoundedPolicy(f, p)
		f.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, &pb.PolicyFile{Name: p, Data: data})
	}
	return out, nil
}

func readBoundedPolicy(r io.Reader, name string) ([]byte, error) {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(r, policy.MaxFileSize+1)); err != nil {
		return nil, fmt.Errorf("policy: %s: %w", name, err)
	}
	if buf.Len() > policy.MaxFileSize {
		return nil, fmt.Errorf("policy: %s: larger than %d bytes", name, policy.MaxFileSize)
	}
	return buf.Bytes(), nil
}

// policyAdminCall is adminFlags.call with the messages policy users need: a
// bad document's reason (its file and line) as the server gives it, and
// what to do when no server answers on the socket.
func policyAdminCall(c *cobra.Command, admin *adminFlags, f func(ctx context.Context, client pb.AdminClient) error) error {
	socket := admin.socket
	if socket == "" {
		return usagef("give --admin-socket PATH (the server's --admin-socket) or set MESHFED_ADMIN_SOCKET")
	}
	noServer := fmt.Errorf("no server at %s: is meshfed server running?", socket)
	if _, err := os.Stat(socket); err != nil {
		return noServer
	}
	var err error
	if dialErr := callSocket(c, socket, "", func(ctx context.Context, conn *grpc.ClientConn) error {
		err = f(ctx, pb.NewAdminClient(conn))
		return nil
	}); dialErr != nil {
		return dialErr
	}
	st, ok := status.FromError(err)
	switch {
	case err == nil:
		return nil
	case !ok:
		return err
	case st.Code() == codes.Unavailable && strings.Contains(st.Message(), "connect"):
		return noServer // a socket file left behind by a server that is gone
	case st.Code() == codes.InvalidArgument:
		return errors.New(st.Message())
	}
	return fmt.Errorf("%s (%s)", st.Message(), st.Code())
}
