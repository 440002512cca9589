package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/testsync"
)

// demoPIDs are the pids of the meshfed processes a demo's story says it
// started and stopped.
var demoPIDs = regexp.MustCompile(`\(pids? ([0-9 ,]+)`)

// demoRemoved is the demo's last line: the temporary directory it removed.
var demoRemoved = regexp.MustCompile(`(?m)^removed (\S+)$`)

// assertDemoCleanedUp checks that no process the demo started is running
// and that its temporary directory is gone.
func assertDemoCleanedUp(t *testing.T, stdout string) {
	t.Helper()
	var pids []int
	for _, m := range demoPIDs.FindAllStringSubmatch(stdout, -1) {
		for _, f := range strings.FieldsFunc(m[1], func(r rune) bool { return r == ' ' || r == ',' }) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("pid %q in the story: %v", f, err)
			}
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		t.Fatal("the story names no process")
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			// Alive, or a zombie: is it still one of ours, or a reused pid?
			cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			if strings.Contains(string(cmdline), meshfedBin) {
				t.Errorf("meshfed process %d (%s) is still there after the demo", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
			}
		}
	}
	m := demoRemoved.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatal("the demo does not say it removed its directory")
	}
	if _, err := os.Stat(m[1]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the demo's directory %s is still there (%v)", m[1], err)
	}
}

// TestDemoTellsTheStory runs `meshfed demo` as a user would: it must exit
// 0 within a minute and a half, tell every step, and leave nothing running.
func TestDemoTellsTheStory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, meshfedBin, "demo")
	cmd.Dir = t.TempDir()
	var stdout, stderr testsync.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("meshfed demo took %.1fs", time.Since(start).Seconds())
	out := stdout.String()
	if err != nil {
		t.Fatalf("meshfed demo: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	for _, want := range []string{
		"\nStep 1. ", "\nStep 2. ", "\nStep 3. ", "\nStep 4. ", "\nStep 5. ", "\nStep 6. ",
		"✓ two different roots",
		`✓ the call fails; reviews' verifier: x509svid: could not get X509 bundle: x509bundle: no X.509 bundle for trust domain "west.example"`,
		"✓ no process restarted",
		"✓ reviews -> ratings: 200 ",
		`ratings (west.example) log: GET /ratings/0 source.principal="east.example/ns/default/sa/reviews"`,
		"[root, no trust domain: shared]",
		"✓ ratings verified reviews with the bundle of north.example",
		"✓ reviews verified ratings with the bundle of south.example",
		"✓ reviews (north) -> its sidecar -> mTLS -> ratings' sidecar -> ratings (south): 200 ",
		"✓ ratings' sidecar logged source.principal=north.example/ns/default/sa/reviews, policy=default/ratings-viewer",
		"✓ ratings got X-Forwarded-Client-Cert: By=spiffe://south.example/ns/default/sa/ratings;Hash=",
		"✓ a plaintext call straight to ratings' port is turned away (STRICT): result=plaintext_refused",
		"✓ a call as south.example/ns/default/sa/ratings (a valid SVID, another principal): 403 RBAC: access denied",
		"    mTLS:           STRICT (set by default/default: namespace-wide policy)",
		"    Authorization:  DENIED",
		`      rule 0: no match: from: principals ["north.example/ns/default/sa/reviews"] does not match "south.example/ns/default/sa/ratings"`,
		"The story held",
		"stopped 13 meshfed processes",
		"west ratings proxy (pid ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the story lacks %q", want)
		}
	}
	for _, re := range []string{`✓ [1-9][0-9]* requests during rotation, 0 failed\n`, `✓ [1-9][0-9]* requests through the sidecars during rotation, 0 failed\n`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("the story lacks %q", re)
		}
	}
	if strings.Contains(out+stderr.String(), "FAIL") {
		t.Error("the story says FAIL")
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Error("the story printed key material")
	}
	if t.Failed() {
		t.Logf("stdout:\n%s\nstderr:\n%s", out, stderr.String())
	}
	assertDemoCleanedUp(t, out)
}

// TestDemoStopsEverythingOnInterrupt interrupts the demo in the middle of
// its story, as Ctrl-C does: it stops every process it started, removes its
// directory and exits 1 saying where it stopped.
func TestDemoStopsEverythingOnInterrupt(t *testing.T) {
	cmd := exec.Command(meshfedBin, "demo")
	cmd.Dir = t.TempDir()
	var stdout, stderr testsync.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	testsync.EventuallyWithin(t, 60*time.Second, "the demo to reach step 3", func() bool { return strings.Contains(stdout.String(), "\nStep 3. ") })
	cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("interrupted demo: %v, want exit 1", err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("the demo did not stop within 30s of SIGINT\nstdout:\n%s", stdout.String())
	}
	if !strings.Contains(stderr.String(), "meshfed: demo: interrupted during step 3") {
		t.Errorf("stderr: %s", stderr.String())
	}
	assertDemoCleanedUp(t, stdout.String())
}
