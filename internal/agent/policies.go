package agent

import (
	"errors"
	"io/fs"
	"path/filepath"

	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/api/agentv1"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/pemfile"
	"google.golang.org/protobuf/proto"
)

// policiesFile keeps the last policy snapshot the server sent (a binary
// agentv1.PolicySnapshot), so that a restarted agent serves it to its
// proxies while the server is unreachable. Policy is not secret; the file is
// written atomically with the public mode of bundle.pem.
const policiesFile = "policies.pb"

// maxPoliciesFileBytes bounds the file read back: the server keeps at most
// 2 MiB of policy YAML (store.MaxPolicyTotalBytes), and a Watch message is
// at most gRPC's 4 MiB.
const maxPoliciesFileBytes = 4 << 20

// policyState is the policy snapshot the agent serves to its proxies.
type policyState struct {
	snap    *agentv1.PolicySnapshot // nil until the server sent one or one was loaded
	changed chan struct{}           // closed at the next change
}

// Policies returns the policy snapshot to serve, nil while there is none.
// It is shared and never modified; a change replaces it.
func (c *Cache) Policies() *agentv1.PolicySnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.policies.snap
}

// PoliciesChanged returns a channel closed at the next change of Policies.
func (c *Cache) PoliciesChanged() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.policyChanged()
}

// policyChanged returns the current change channel; call with mu held.
func (c *Cache) policyChanged() chan struct{} {
	if c.policies.changed == nil {
		c.policies.changed = make(chan struct{})
	}
	return c.policies.changed
}

// setPolicies installs snap unless it equals the one served, and reports
// whether it did.
func (c *Cache) setPolicies(snap *agentv1.PolicySnapshot) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.policies.snap != nil && proto.Equal(c.policies.snap, snap) {
		return false
	}
	c.policies.snap = snap
	close(c.policyChanged())
	c.policies.changed = make(chan struct{})
	return true
}

// policySnapshot is the proxies' view of the policies in a Watch snapshot.
func policySnapshot(w *pb.WatchResponse) *agentv1.PolicySnapshot {
	snap := &agentv1.PolicySnapshot{Revision: w.GetPolicyRevision()}
	for _, p := range w.GetPolicies() {
		snap.Policies = append(snap.Policies, &agentv1.Policy{
			Kind: p.GetKind(), Namespace: p.GetNamespace(), Name: p.GetName(), Yaml: p.GetYaml(),
			CreatedAtMs: p.GetCreatedAtMs(), Generation: p.GetGeneration(),
		})
	}
	return snap
}

// applyPolicies serves the policies of a Watch snapshot and, when they
// changed, persists them.
//
// Policy revision 0 says the server never had a policy: a new database, or
// a server older than policy support, which sends no policies at all. An
// agent that holds policies of a later revision keeps them then instead of
// serving none, so that rolling a server back, or pointing agents at one
// without policy support, does not open every proxy it serves (no
// AuthorizationPolicy allows everything, no PeerAuthentication is
// PERMISSIVE). Deleting policies on the server moves the revision, so a
// real removal still reaches the proxies.
func (a *Agent) applyPolicies(w *pb.WatchResponse) {
	if w.GetPoliciesUnchanged() {
		return // the stream's previous message carried them
	}
	snap := policySnapshot(w)
	if held := a.Cache.Policies(); snap.GetRevision() == 0 && held.GetRevision() > 0 {
		if a.keptPolicies != held.GetRevision() {
			a.keptPolicies = held.GetRevision()
			a.log.Warn("the server reports it never had policies (policy revision 0: a new database, or a server without policy support); "+
				"keeping the ones already served. Apply or delete policies on the server to replace them",
				"policy_revision", held.GetRevision(), "documents", len(held.GetPolicies()))
		}
		return
	}
	a.keptPolicies = 0
	if !a.Cache.setPolicies(snap) {
		return
	}
	a.log.Info("policies updated", "policy_revision", snap.GetRevision(), "documents", len(snap.GetPolicies()))
	data, err := proto.Marshal(snap)
	if err == nil {
		err = pemfile.WriteFile(filepath.Join(a.cfg.DataDir, policiesFile), data, pemfile.ModePublic)
	}
	if err != nil {
		a.log.Error("keeping the policies in the data dir failed; a restart during a server outage would serve none until the server answers", "error", err)
	}
}

// loadPolicies serves the policies kept from before a restart, if any. A
// file that cannot be read is not fatal: the server sends the policies
// again when it answers.
func (a *Agent) loadPolicies() {
	path := filepath.Join(a.cfg.DataDir, policiesFile)
	data, err := pemfile.ReadFile(path, maxPoliciesFileBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	snap := &agentv1.PolicySnapshot{}
	if err == nil {
		err = proto.Unmarshal(data, snap)
	}
	if err != nil {
		a.log.Error("ignoring the kept policies; waiting for the server's", "file", path, "error", err)
		return
	}
	a.Cache.setPolicies(snap)
	a.log.Info("serving the policies kept from before the restart until the server sends its own", "policy_revision", snap.GetRevision(), "documents", len(snap.GetPolicies()))
}

// The cache is what the PolicyDiscovery service serves from.
var _ workloadapi.PolicySource = (*Cache)(nil)
