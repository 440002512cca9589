package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/policy"
	"github.com/meshfed/meshfed/internal/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Policies pushed from the server, as istiod pushes them: `meshfed policy
// apply` sends YAML files to the Admin service, which parses and validates
// every document (policy.Parse), checks that the stored set with them builds
// (policy.NewSet), and stores each document's own text. Every agent's Watch
// snapshot carries the whole set, so a change reaches every proxy as soon as
// the agents' streams do; servers sharing the database notice it with the
// store revision, as they notice entries.

// MaxPolicyFiles bounds the files of one ApplyPolicies call (each is bounded
// by policy.MaxFileSize, and the whole call by MaxRequestBytes).
const MaxPolicyFiles = policy.MaxFiles

// maxPolicyFileName bounds a file name, which appears in errors.
const maxPolicyFileName = 1024

// Kubernetes' rules for the names a policy is stored by: a namespace is a
// DNS label, a name a DNS subdomain.
var (
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// storedPolicyFile is the file name a stored document is parsed under, in
// error messages and for Istio's tie-break by name: "server:<ns>/<name>", as
// proxies name it too (policyclient.SourceFile).
func storedPolicyFile(namespace, name string) string { return "server:" + namespace + "/" + name }

func (a *adminService) ApplyPolicies(ctx context.Context, req *pb.ApplyPoliciesRequest) (*pb.ApplyPoliciesResponse, error) {
	s := a.s
	resp, err := a.applyPolicies(ctx, req)
	result := "ok"
	switch status.Code(err) {
	case codes.OK:
	case codes.InvalidArgument:
		result = "invalid"
	default:
		result = "error"
	}
	s.metrics.policyChanges.WithLabelValues("apply", result).Inc()
	switch code := status.Code(err); code {
	case codes.OK:
	case codes.Unavailable:
		s.log.Error("policy apply failed", "files", len(req.GetFiles()), "dry_run", req.GetDryRun(), "error", err)
	default:
		// The caller is told why; the reason may quote a document, whose
		// content is never logged.
		s.log.Warn("policy apply refused", "files", len(req.GetFiles()), "dry_run", req.GetDryRun(), "code", code.String())
	}
	return resp, err
}

func (a *adminService) applyPolicies(ctx context.Context, req *pb.ApplyPoliciesRequest) (*pb.ApplyPoliciesResponse, error) {
	s := a.s
	files := req.GetFiles()
	if len(files) == 0 || len(files) > MaxPolicyFiles {
		return nil, status.Errorf(codes.InvalidArgument, "server: send 1 to %d policy files, not %d", MaxPolicyFiles, len(files))
	}
	var (
		docs  []policy.Document
		batch []store.Policy
	)
	for _, f := range files {
		name := f.GetName()
		if name == "" || len(name) > maxPolicyFileName {
			return nil, status.Errorf(codes.InvalidArgument, "server: a policy file needs a name of 1 to %d bytes", maxPolicyFileName)
		}
		parsed, texts, err := splitPolicies(name, f.GetData())
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		docs = append(docs, parsed...)
		for i, d := range parsed {
			batch = append(batch, store.Policy{Kind: string(d.Kind), Namespace: d.Namespace, Name: d.Name, YAML: texts[i]})
		}
		if len(docs) > policy.MaxDocuments {
			return nil, status.Errorf(codes.InvalidArgument, "server: more than %d policy documents in one apply", policy.MaxDocuments)
		}
	}
	if len(docs) == 0 {
		return nil, status.Error(codes.InvalidArgument, "server: no policy documents in the files given")
	}

	// The set as it will be: the stored documents, replaced by these.
	stored, storedRev, err := s.store.ListPolicies(ctx)
	if err != nil {
		return nil, storeStatus(err)
	}
	current := make(map[string]store.Policy, len(stored))
	for _, p := range stored {
		current[p.Kind+" "+p.Namespace+"/"+p.Name] = p
	}
	merged := docs
	for _, d := range docs {
		delete(current, string(d.Kind)+" "+d.Ref())
	}
	for _, p := range current {
		d, err := parseStoredPolicy(p)
		if err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "server: %v; delete it or apply it again", err)
		}
		merged = append(merged, d)
	}
	if _, err := policy.NewSet(merged); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}

	resp := &pb.ApplyPoliciesResponse{}
	if req.GetDryRun() {
		had := make(map[string][]byte, len(stored))
		for _, p := range stored {
			had[p.Kind+" "+p.Namespace+"/"+p.Name] = p.YAML
		}
		for _, p := range batch {
			result := store.PolicyCreated
			if old, ok := had[p.Kind+" "+p.Namespace+"/"+p.Name]; ok {
				result = store.PolicyConfigured
				if bytes.Equal(old, p.YAML) {
					result = store.PolicyUnchanged
				}
			}
			resp.Policies = append(resp.Policies, &pb.AppliedPolicy{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name, Result: string(result)})
		}
		resp.PolicyRevision = storedRev
		return resp, nil
	}

	applied, rev, err := s.store.ApplyPolicies(ctx, batch)
	if err != nil {
		return nil, storeStatus(err)
	}
	changed := 0
	for _, ap := range applied {
		p := ap.Policy
		resp.Policies = append(resp.Policies, &pb.AppliedPolicy{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name, Result: string(ap.Result)})
		if ap.Result != store.PolicyUnchanged {
			changed++
			s.log.Info("policy "+string(ap.Result), "kind", p.Kind, "namespace", p.Namespace, "name", p.Name, "generation", p.Generation, "policy_revision", rev)
		}
	}
	resp.PolicyRevision = rev
	if changed > 0 {
		s.changed(ctx)
	}
	return resp, nil
}

func (a *adminService) ListPolicies(ctx context.Context, _ *pb.ListPoliciesRequest) (*pb.ListPoliciesResponse, error) {
	list, rev, err := a.s.store.ListPolicies(ctx)
	if err != nil {
		return nil, storeStatus(err)
	}
	resp := &pb.ListPoliciesResponse{PolicyRevision: rev}
	for _, p := range list {
		resp.Policies = append(resp.Policies, policyMessage(p))
	}
	return resp, nil
}

func (a *adminService) DeletePolicy(ctx context.Context, req *pb.DeletePolicyRequest) (*pb.DeletePolicyResponse, error) {
	s := a.s
	kind, ns, name := req.GetKind(), req.GetNamespace(), req.GetName()
	switch policy.Kind(kind) {
	case policy.KindPeerAuthentication, policy.KindRequestAuthentication, policy.KindAuthorizationPolicy:
	default:
		s.metrics.policyChanges.WithLabelValues("delete", "invalid").Inc()
		return nil, status.Errorf(codes.InvalidArgument, "server: kind %q: give PeerAuthentication, RequestAuthentication or AuthorizationPolicy", kind)
	}
	rev, err := s.store.DeletePolicy(ctx, kind, ns, name)
	if err != nil {
		result := "error"
		switch {
		case errors.Is(err, store.ErrNotFound):
			result = "not_found"
		case errors.Is(err, store.ErrInvalid):
			result = "invalid"
		}
		s.metrics.policyChanges.WithLabelValues("delete", result).Inc()
		return nil, storeStatus(err)
	}
	s.metrics.policyChanges.WithLabelValues("delete", "ok").Inc()
	s.log.Info("policy deleted", "kind", kind, "namespace", ns, "name", name, "policy_revision", rev)
	s.changed(ctx)
	return &pb.DeletePolicyResponse{PolicyRevision: rev}, nil
}

// splitPolicies parses one file and cuts it into each document's own text,
// which is what is stored: every text is parsed again on its own and must
// give the same document, so what agents and proxies parse later is what
// was validated here. Names must be what Kubernetes would store.
func splitPolicies(file string, data []byte) ([]policy.Document, [][]byte, error) {
	docs, err := policy.Parse(file, data)
	if err != nil {
		return nil, nil, err
	}
	texts := make([][]byte, len(docs))
	for i, d := range docs {
		if !dnsLabel.MatchString(d.Namespace) || len(d.Namespace) > store.MaxPolicyNamespaceBytes {
			return nil, nil, fmt.Errorf("policy: %s: %s %s: metadata.namespace: %q is not a Kubernetes namespace (a DNS label: lowercase letters, digits and '-', at most 63)", d.Where(), d.Kind, d.Ref(), d.Namespace)
		}
		if !dnsSubdomain.MatchString(d.Name) || len(d.Name) > store.MaxPolicyNameBytes {
			return nil, nil, fmt.Errorf("policy: %s: %s %s: metadata.name: %q is not a Kubernetes name (a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253)", d.Where(), d.Kind, d.Ref(), d.Name)
		}
		text := documentText(data, d.Line)
		again, err := policy.Parse(file, text)
		if err != nil || len(again) != 1 || again[0].Kind != d.Kind || again[0].Ref() != d.Ref() {
			return nil, nil, fmt.Errorf("policy: %s: %s %s: the document cannot be cut out of its file on its own; put it in a file by itself", d.Where(), d.Kind, d.Ref())
		}
		if len(text) > store.MaxPolicyBytes {
			return nil, nil, fmt.Errorf("policy: %s: %s %s: %d bytes, more than the %d a stored document may have", d.Where(), d.Kind, d.Ref(), len(text), store.MaxPolicyBytes)
		}
		texts[i] = text
	}
	return docs, texts, nil
}

// documentText returns the lines of data from line (1-based) up to the next
// YAML document separator ("---", as policy.Parse splits), with a final
// newline.
func documentText(data []byte, line int) []byte {
	lines := bytes.SplitAfter(data, []byte("\n"))
	var out []byte
	for i := line - 1; i >= 0 && i < len(lines); i++ {
		l := bytes.TrimRight(lines[i], "\r\n")
		if i > line-1 && bytes.HasPrefix(l, []byte("---")) && (len(l) == 3 || l[3] == ' ' || l[3] == '\t') {
			break
		}
		out = append(out, lines[i]...)
	}
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	return out
}

// parseStoredPolicy parses a stored document, with its creation time on the
// server as its creationTimestamp.
func parseStoredPolicy(p store.Policy) (policy.Document, error) {
	docs, err := policy.Parse(storedPolicyFile(p.Namespace, p.Name), p.YAML)
	if err != nil {
		return policy.Document{}, fmt.Errorf("stored policy %s %s/%s no longer parses: %w", p.Kind, p.Namespace, p.Name, err)
	}
	if len(docs) != 1 || string(docs[0].Kind) != p.Kind || docs[0].Namespace != p.Namespace || docs[0].Name != p.Name {
		return policy.Document{}, fmt.Errorf("stored policy %s %s/%s is not one document of that kind and name", p.Kind, p.Namespace, p.Name)
	}
	docs[0].Created = p.CreatedAt
	return docs[0], nil
}

func policyMessage(p store.Policy) *pb.Policy {
	return &pb.Policy{
		Kind: p.Kind, Namespace: p.Namespace, Name: p.Name, Yaml: p.YAML,
		CreatedAtMs: p.CreatedAt.UnixMilli(), UpdatedAtMs: p.UpdatedAt.UnixMilli(),
		Generation: p.Generation, Revision: p.Revision,
	}
}

// policyMemo keeps the policy messages of one store revision, so that the
// Watch streams of every agent, all woken by one change, read the store
// once between them.
type policyMemo struct {
	mu       sync.Mutex
	loaded   bool
	revision int64 // s.revision when loaded: the messages are at least this new
	msgs     []*pb.Policy
	policy   int64 // the policy revision
}

// policySnapshot returns every stored policy as messages (shared: callers
// must not modify them) and the policy revision.
func (s *Server) policySnapshot(ctx context.Context) ([]*pb.Policy, int64, error) {
	rev := s.revision.Load()
	m := &s.policies
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.loaded && m.revision == rev {
		return m.msgs, m.policy, nil
	}
	start := time.Now()
	list, prev, err := s.store.ListPolicies(ctx)
	s.metrics.observeStore("list_policies", start)
	if err != nil {
		s.log.Error("reading the policies failed", "error", err)
		return nil, 0, status.Error(codes.Unavailable, "server: the store is unavailable; retry")
	}
	msgs := make([]*pb.Policy, len(list))
	for i, p := range list {
		msgs[i] = policyMessage(p)
	}
	m.loaded, m.revision, m.msgs, m.policy = true, rev, msgs, prev
	return msgs, prev, nil
}
