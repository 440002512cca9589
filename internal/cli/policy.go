package cli

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/meshfed/meshfed/internal/policy"
	"github.com/spf13/cobra"
)

func init() { register(newPolicyCommand) }

func newPolicyCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "policy",
		Short: "Istio security policy: apply it to the server, or explain and lint it offline",
		Long: `Istio's security policy - PeerAuthentication, RequestAuthentication and
AuthorizationPolicy (security.istio.io/v1beta1 or v1), the same YAML you
would 'kubectl apply -f' - in two ways.

On the server: 'apply', 'list' and 'delete' keep the trust domain's policy
on its server, as istiod keeps it, and every agent pushes each change to
the proxies on its host at once, without a restart.

Offline: 'explain' and 'lint' read a directory of policy and evaluate it
the way Istio does, without a cluster. Policies stored in the root
namespace (--root-namespace, default istio-system) apply mesh-wide. Where
Istio breaks ties by age, the order is metadata.creationTimestamp when
given (a policy with one is older than any without), then file name, then
position in the file; policy from the server is as old as it was first
applied there. Other kinds, unknown fields, CUSTOM actions and targetRefs
are refused with the file and line.`,
		Example: `  meshfed policy apply -f ./policies --admin-socket east/admin.sock
  meshfed policy list --admin-socket east/admin.sock
  meshfed policy explain --policies ./policies --namespace foo --labels app=httpbin --port 8000 \
      --principal cluster.local/ns/default/sa/sleep --method GET --path /info
  meshfed policy lint --policies ./policies`,
	}
	c.AddCommand(newPolicyApply(), newPolicyList(), newPolicyDelete(), newPolicyExplain(), newPolicyLint())
	return c
}

type policyFlags struct {
	dir, root  string
	skipOthers bool
}

func (p *policyFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&p.dir, "policies", "", "directory of policy YAML (*.yaml, *.yml, *.json)")
	c.Flags().StringVar(&p.root, "root-namespace", policy.DefaultRootNamespace, "the mesh's root namespace")
	c.Flags().BoolVar(&p.skipOthers, "skip-other-kinds", false, "skip documents of other kinds instead of refusing them")
	_ = c.MarkFlagRequired("policies")
}

func (p *policyFlags) load() (*policy.Set, error) {
	opts := []policy.Option{policy.WithRootNamespace(p.root)}
	if p.skipOthers {
		opts = append(opts, policy.SkipOtherKinds())
	}
	return policy.LoadDir(p.dir, opts...)
}

// explanation is what 'policy explain' prints.
type explanation struct {
	Namespace     string                `json:"namespace"`
	Labels        map[string]string     `json:"labels"`
	Port          uint32                `json:"port"`
	MTLS          policy.Decision       `json:"mtls"`
	Plaintext     string                `json:"plaintext,omitempty"`
	JWTRules      []jwtRuleView         `json:"jwtRules"`
	JWT           *jwtVerdict           `json:"jwt,omitempty"`
	Authorization *policy.AuthzDecision `json:"authorization,omitempty"`
	NotAuthorized string                `json:"notAuthorized,omitempty"`
	// Policies are the AuthorizationPolicies that apply, each rule with
	// whether it matched and, if not, why.
	Policies []policy.PolicyTrace `json:"policies,omitempty"`
}

type jwtRuleView struct {
	Policy                string   `json:"policy"`
	Index                 int      `json:"index"`
	Issuer                string   `json:"issuer"`
	Audiences             []string `json:"audiences,omitempty"`
	Keys                  string   `json:"keys"`
	Locations             []string `json:"locations"`
	ForwardOriginalToken  bool     `json:"forwardOriginalToken,omitempty"`
	OutputPayloadToHeader string   `json:"outputPayloadToHeader,omitempty"`
}

type jwtVerdict struct {
	Valid     bool   `json:"valid"`
	Principal string `json:"principal,omitempty"`
	Rule      string `json:"rule,omitempty"`
	Error     string `json:"error,omitempty"`
}

func newPolicyExplain() *cobra.Command {
	var (
		pf                                 policyFlags
		ns, labels, principal              string
		method, path, host, sni            string
		jwtFile, sourceIP, nowFlag, output string
		jwks, headers                      []string
		port                               uint32
		tcp                                bool
	)
	c := &cobra.Command{
		Use:   "explain --policies DIR --namespace NS --labels k=v[,k=v...] --port N",
		Short: "Show the mTLS mode, JWT rules and authorization decision for a workload and request",
		Long: `Explain what Istio's policy does to one request to one workload.

It prints, in order:
  1. the effective mTLS mode of the workload's port (STRICT, PERMISSIVE or
     DISABLE) and the policy that set it ("(default)" when none did);
  2. the JWT rules in force for the workload and, with --jwt, the token's
     verdict (an invalid token is rejected with 401 before authorization;
     no token passes with no request principal);
  3. the authorization decision with the deciding policy and rule, or the
     default that decided ("no ALLOW policy applies to the workload: allowed").

The request is HTTP unless --tcp is given; --principal is the peer's mTLS
identity (<trust domain>/ns/<ns>/sa/<sa>) and is dropped when the port's
mode is DISABLE. Keys for jwksUri rules come from --jwks URI=FILE (or
--jwks FILE for every jwksUri), and for rules with neither jwks nor jwksUri
(OpenID discovery, at a running proxy) from --jwks ISSUER=FILE; nothing is
fetched from the network. The
exit code is 0 whatever the decision; it is 1 when the policy cannot be read.`,
		Example: `  meshfed policy explain --policies ./policies --namespace foo --labels app=httpbin --port 8000 \
      --principal cluster.local/ns/default/sa/sleep --method GET --path /info
  meshfed policy explain --policies ./policies --namespace foo --labels app=web --port 8080 \
      --jwt token.jwt --jwks https://issuer.example/jwks=jwks.json -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			lbls, err := parseLabels(labels)
			if err != nil {
				return err
			}
			hdrs := map[string][]string{}
			for _, h := range headers {
				k, v, ok := strings.Cut(h, "=")
				if !ok || k == "" {
					return usagef("--header %q: give NAME=VALUE", h)
				}
				hdrs[k] = append(hdrs[k], v)
			}
			now := time.Now()
			if nowFlag != "" {
				if now, err = time.Parse(time.RFC3339, nowFlag); err != nil {
					return usagef("--now %q: give an RFC 3339 time", nowFlag)
				}
			}
			var src netip.Addr
			if sourceIP != "" {
				if src, err = netip.ParseAddr(sourceIP); err != nil {
					return usagef("--source-ip %q is not an IP address", sourceIP)
				}
			}
			if port == 0 || port > 65535 {
				return usagef("--port %d: give a port between 1 and 65535", port)
			}
			fetcher, err := jwksFiles(jwks)
			if err != nil {
				return err
			}
			set, err := pf.load()
			if err != nil {
				return err
			}
			set = set.WithJWKSFetcher(fetcher)
			ex := explanation{Namespace: ns, Labels: lbls, Port: port, JWTRules: []jwtRuleView{}}
			ex.MTLS = set.MTLS(ns, lbls, port)
			switch {
			case ex.MTLS.Mode == policy.ModeDisable && principal != "":
				ex.Plaintext = "mTLS is DISABLE on this port: the connection is plaintext and has no peer principal"
				principal = ""
			case ex.MTLS.Mode == policy.ModeStrict && principal == "":
				ex.Plaintext = "no --principal: a plaintext client is refused by STRICT mTLS; authorization shown as for a plaintext request"
			}
			for _, r := range set.JWTRules(ns, lbls) {
				keys := "jwks (inline)"
				switch {
				case r.Rule.GetJwksUri() != "":
					keys = "jwksUri " + r.Rule.GetJwksUri()
				case r.Rule.GetJwks() == "":
					keys = "OpenID discovery of " + r.Rule.GetIssuer()
				}
				ex.JWTRules = append(ex.JWTRules, jwtRuleView{
					Policy: r.Policy, Index: r.Index, Issuer: r.Rule.GetIssuer(), Audiences: r.Rule.GetAudiences(),
					Keys: keys, Locations: r.Locations(), ForwardOriginalToken: r.Rule.GetForwardOriginalToken(),
					OutputPayloadToHeader: r.Rule.GetOutputPayloadToHeader(),
				})
			}
			var auth *policy.AuthnResult
			if jwtFile != "" {
				tok, err := readSmall(jwtFile, policy.MaxTokenSize)
				if err != nil {
					return err
				}
				h := map[string][]string{}
				for k, v := range hdrs {
					h[k] = v
				}
				h["Authorization"] = []string{"Bearer " + strings.TrimSpace(string(tok))}
				res, err := set.Authenticate(ns, lbls, h, url.Values{}, now)
				switch {
				case err != nil:
					ex.JWT = &jwtVerdict{Error: strings.TrimPrefix(err.Error(), "policy: ")}
					ex.NotAuthorized = "the request is rejected with 401 by request authentication before authorization"
				case res.Principal == "":
					ex.JWT = &jwtVerdict{Valid: true, Error: "no jwtRule looks in the Authorization header: the token is not examined"}
				default:
					ex.JWT = &jwtVerdict{Valid: true, Principal: res.Principal, Rule: res.Rule}
					auth = &res
				}
			}
			if ex.NotAuthorized == "" {
				req := policy.Request{
					TCP: tcp, Principal: principal, SourceIP: src, Port: port, SNI: sni,
					Host: host, Method: method, Path: path, Headers: hdrs, Auth: auth,
				}
				d := set.Authorize(ns, lbls, req)
				ex.Authorization = &d
				ex.Policies = set.TraceAuthorization(ns, lbls, req)
			}
			return printData(c.OutOrStdout(), output, ex, func(w io.Writer) error { return printExplanation(w, ex) })
		},
	}
	pf.add(c)
	c.Flags().StringVarP(&ns, "namespace", "n", "", "the workload's namespace")
	c.Flags().StringVarP(&labels, "labels", "l", "", "the workload's labels, k=v[,k=v...]")
	c.Flags().Uint32Var(&port, "port", 0, "the workload's port the request arrives on")
	c.Flags().StringVar(&principal, "principal", "", "the peer's mTLS principal, <td>/ns/<ns>/sa/<sa> (none: plaintext)")
	c.Flags().StringVar(&method, "method", "", "HTTP method")
	c.Flags().StringVar(&path, "path", "", "HTTP path")
	c.Flags().StringVar(&host, "host", "", "HTTP host")
	c.Flags().StringArrayVar(&headers, "header", nil, "HTTP header NAME=VALUE (repeatable)")
	c.Flags().StringVar(&sni, "sni", "", "TLS server name of the connection")
	c.Flags().StringVar(&sourceIP, "source-ip", "", "the peer's IP address")
	c.Flags().BoolVar(&tcp, "tcp", false, "the port carries plain TCP, not HTTP")
	c.Flags().StringVar(&jwtFile, "jwt", "", "file holding the request's JWT (sent as Authorization: Bearer)")
	c.Flags().StringArrayVar(&jwks, "jwks", nil, "JWKS for jwksUri rules: URI=FILE, or FILE for every jwksUri (repeatable)")
	c.Flags().StringVar(&nowFlag, "now", "", "evaluate token times at this RFC 3339 time instead of now")
	outputFlag(c, &output)
	_ = c.MarkFlagRequired("namespace")
	_ = c.MarkFlagRequired("port")
	return c
}

func printExplanation(w io.Writer, ex explanation) error {
	fmt.Fprintf(w, "mTLS:           %s (set by %s: %s)\n", ex.MTLS.Mode, ex.MTLS.Policy, ex.MTLS.Reason)
	if ex.Plaintext != "" {
		fmt.Fprintf(w, "                %s\n", ex.Plaintext)
	}
	if len(ex.JWTRules) == 0 {
		fmt.Fprintln(w, "JWT rules:      none (no RequestAuthentication applies)")
	} else {
		fmt.Fprintln(w, "JWT rules:")
		for _, r := range ex.JWTRules {
			fmt.Fprintf(w, "  %s jwtRules[%d]: issuer %s", r.Policy, r.Index, r.Issuer)
			if len(r.Audiences) > 0 {
				fmt.Fprintf(w, ", audiences %s", strings.Join(r.Audiences, ","))
			}
			fmt.Fprintf(w, ", keys from %s, token from %s", r.Keys, strings.Join(r.Locations, " or "))
			if r.ForwardOriginalToken {
				fmt.Fprint(w, ", forwards the original token")
			}
			if r.OutputPayloadToHeader != "" {
				fmt.Fprintf(w, ", payload to header %s", r.OutputPayloadToHeader)
			}
			fmt.Fprintln(w)
		}
	}
	if ex.JWT != nil {
		switch {
		case !ex.JWT.Valid:
			fmt.Fprintf(w, "JWT:            invalid: %s (401)\n", ex.JWT.Error)
		case ex.JWT.Principal == "":
			fmt.Fprintf(w, "JWT:            %s\n", ex.JWT.Error)
		default:
			fmt.Fprintf(w, "JWT:            valid: request principal %s (%s)\n", ex.JWT.Principal, ex.JWT.Rule)
		}
	}
	if ex.Authorization == nil {
		fmt.Fprintf(w, "Authorization:  not evaluated: %s\n", ex.NotAuthorized)
		return nil
	}
	d := ex.Authorization
	verdict := "DENIED"
	if d.Allowed {
		verdict = "ALLOWED"
	}
	if d.Policy != "" {
		fmt.Fprintf(w, "Authorization:  %s by %s %s rule %d\n", verdict, d.Action, d.Policy, d.Rule)
	} else {
		fmt.Fprintf(w, "Authorization:  %s: %s\n", verdict, d.Reason)
	}
	if d.Audit {
		fmt.Fprintf(w, "Audit:          marked for audit by %s\n", d.AuditPolicy)
	}
	for _, p := range ex.Policies {
		dry := ""
		if p.DryRun {
			dry = ", dry-run: not enforced"
		}
		fmt.Fprintf(w, "  %s %s%s:\n", p.Action, p.Policy, dry)
		if len(p.Rules) == 0 {
			fmt.Fprintln(w, "    no rules: matches nothing")
		}
		for _, r := range p.Rules {
			if r.Matched {
				fmt.Fprintf(w, "    rule %d: matches\n", r.Index)
			} else {
				fmt.Fprintf(w, "    rule %d: no match: %s\n", r.Index, r.Why)
			}
		}
	}
	return nil
}

func newPolicyLint() *cobra.Command {
	var (
		pf     policyFlags
		output string
	)
	c := &cobra.Command{
		Use:   "lint --policies DIR",
		Short: "Report what Istio would ignore in a policy directory",
		Long: `Report what Istio would ignore or what does something other than it seems:
a second mesh-wide or namespace-wide PeerAuthentication (Istio keeps only
the oldest), portLevelMtls on a policy without a selector, a selector in
the root namespace (it applies to the root namespace only), a workload
policy shadowed by an older one with the same selector, AuthorizationPolicies
whose rules allow or deny everything or nothing, DENY rules with HTTP-only
fields and no ports (on TCP ports they deny everything), dry-run policies.
Policy Istio itself would refuse (unknown fields or values, bad ports or IP
blocks) fails to load and is reported as an error.

Exit code: 0 when there is nothing to report, 1 when there are findings or
the policy cannot be read, 2 for a usage error.`,
		Example: `  meshfed policy lint --policies ./policies
  meshfed policy lint --policies ./policies --root-namespace mesh-root -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			set, err := pf.load()
			if err != nil {
				return err
			}
			findings := set.Lint()
			if findings == nil {
				findings = []policy.Finding{}
			}
			err = printData(c.OutOrStdout(), output, findings, func(w io.Writer) error {
				for _, f := range findings {
					fmt.Fprintln(w, f.String())
				}
				return nil
			})
			if err != nil {
				return err
			}
			if len(findings) > 0 {
				return fmt.Errorf("policy lint: %d finding(s) in %s", len(findings), pf.dir)
			}
			return nil
		},
	}
	pf.add(c)
	outputFlag(c, &output)
	return c
}

func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("--labels %q: give k=v[,k=v...]", s)
		}
		out[k] = v
	}
	return out, nil
}

// jwksFiles maps jwksUri to local files: "URI=FILE" for one URI, "FILE" for
// every URI.
func jwksFiles(specs []string) (policy.JWKSFetcher, error) {
	f := &fileJWKS{byURI: map[string]string{}}
	for _, s := range specs {
		if i := strings.LastIndex(s, "="); i > 0 {
			f.byURI[s[:i]] = s[i+1:]
			continue
		}
		if f.any != "" {
			return nil, usagef("--jwks %q: only one --jwks FILE without a URI", s)
		}
		f.any = s
	}
	return f, nil
}

// fileJWKS gives key sets from files, by jwksUri (or, for OpenID
// discovery, by issuer), or one file for all.
type fileJWKS struct {
	byURI map[string]string
	any   string
}

func (f *fileJWKS) FetchJWKS(uri string) ([]byte, error) {
	file, ok := f.byURI[uri]
	if !ok {
		file = f.any
	}
	if file == "" {
		return nil, errors.New("no --jwks file given for it (the network is never used)")
	}
	return readSmall(file, policy.MaxJWKSSize)
}

func (f *fileJWKS) DiscoverJWKS(issuer string) ([]byte, error) { return f.FetchJWKS(issuer) }

func readSmall(path string, max int64) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, max)
	}
	return os.ReadFile(path)
}
