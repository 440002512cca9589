package fetcher

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestValidETag(t *testing.T) {
	for _, tc := range []struct {
		tag  string
		want bool
	}{
		{`"0a1b"`, true},
		{`W/"0a1b"`, true},
		{`""`, true},
		{`"` + strings.Repeat("a", 254) + `"`, true},
		{`"` + strings.Repeat("a", 255) + `"`, false},
		{`"caf` + "\xc3\xa9" + `"`, true}, // obs-text
		{"", false},
		{`0a1b`, false},
		{`"0a1b`, false},
		{`"`, false},
		{`w/"0a1b"`, false},
		{`"a"b"`, false},
		{`"a b"`, false},
		{"\"a\tb\"", false},
		{"\"a\x7fb\"", false},
		{`"a", "b"`, false},
	} {
		if got := validETag(tc.tag); got != tc.want {
			t.Errorf("validETag(%q) = %t, want %t", tc.tag, got, tc.want)
		}
	}
}

func TestAppliedWait(t *testing.T) {
	for _, tc := range []struct {
		values []string
		want   time.Duration
		ok     bool
	}{
		{nil, 0, false},
		{[]string{"wait=30"}, 30 * time.Second, true},
		{[]string{"wait=0"}, 0, true},
		{[]string{" Wait = 7 "}, 7 * time.Second, true},
		{[]string{`wait="60"`}, time.Minute, true},
		{[]string{"return=minimal, wait=5"}, 5 * time.Second, true},
		{[]string{"return=minimal", "wait=5"}, 5 * time.Second, true},
		{[]string{"respond-async"}, 0, false},
		{[]string{"wait"}, 0, false},
		{[]string{"wait=-1"}, 0, false},
		{[]string{"wait=1.5"}, 0, false},
		{[]string{"wait=86400"}, 24 * time.Hour, true},
		{[]string{"wait=86401"}, 0, false},
		{[]string{"wait=99999999999999999999"}, 0, false},
		{[]string{"waiting=5"}, 0, false},
	} {
		h := http.Header{}
		for _, v := range tc.values {
			h.Add("Preference-Applied", v)
		}
		got, ok := appliedWait(h)
		if got != tc.want || ok != tc.ok {
			t.Errorf("appliedWait(%q) = %s, %t; want %s, %t", tc.values, got, ok, tc.want, tc.ok)
		}
	}
}

// TestPushAfter pins what a long poll's outcome means for the next one.
func TestPushAfter(t *testing.T) {
	failed := errors.New("fetcher: west.example: GET https://west.example/: connection refused")
	for _, tc := range []struct {
		name     string
		prev     pushState
		answer   Answer
		err      error
		want     pushState
		wantGoOn bool
	}{
		{"error while on", pushOn, Answer{}, failed, pushUnknown, false},
		{"error on the first", pushUnknown, Answer{}, failed, pushUnknown, false},
		{"held, 304", pushUnknown, Answer{NotModified: true, WaitApplied: true}, nil, pushOn, true},
		{"held, 200", pushUnknown, Answer{WaitApplied: true}, nil, pushOn, true},
		{"held again, 304", pushOn, Answer{NotModified: true, WaitApplied: true}, nil, pushOn, true},
		{"304 at once: the endpoint does not hold", pushUnknown, Answer{NotModified: true}, nil, pushOff, false},
		{"304 at once while on: too busy to hold", pushOn, Answer{NotModified: true}, nil, pushOff, false},
		{"200 at once (or a plain fetch) while on", pushOn, Answer{}, nil, pushUnknown, true},
		{"200 at once (or a plain fetch), again", pushUnknown, Answer{}, nil, pushUnknown, false},
	} {
		got, goOn := pushAfter(tc.prev, tc.answer, tc.err)
		if got != tc.want || goOn != tc.wantGoOn {
			t.Errorf("%s: pushAfter = %s, %t; want %s, %t", tc.name, got, goOn, tc.want, tc.wantGoOn)
		}
	}
}

// FuzzConditionalHeaders runs what FetchConditional does with an
// endpoint's ETag and Preference-Applied headers on arbitrary values: an
// accepted ETag must be a quoted string within maxETagBytes that weakly
// matches itself and its weak form, and must show as itself in errors; a
// rejected one must show quoted and cut; an applied wait must be whole
// seconds within maxAppliedWait. Seeds: the f.Add calls and
// testdata/fuzz/FuzzConditionalHeaders/.
func FuzzConditionalHeaders(f *testing.F) {
	f.Add(`"3b5d5c3712955042212316173ccf37be800f5c2a6c4d1b1b1d45e5d5b5a5c5d5"`, "wait=30")
	f.Add(`W/"x"`, `return=minimal, wait="15"`)
	f.Add(strings.Repeat(`"`, 300), "wait=18446744073709551616")
	f.Fuzz(func(t *testing.T, tag, applied string) {
		if validETag(tag) {
			if len(tag) > maxETagBytes {
				t.Fatalf("accepted an ETag of %d bytes", len(tag))
			}
			opaque := strings.TrimPrefix(tag, "W/")
			if len(opaque) < 2 || opaque[0] != '"' || opaque[len(opaque)-1] != '"' || strings.Contains(opaque[1:len(opaque)-1], `"`) {
				t.Fatalf("accepted %q, which is not one quoted string", tag)
			}
			if !sameETag(tag, tag) || !sameETag(tag, "W/"+opaque) {
				t.Fatalf("%q does not match itself", tag)
			}
			if showETag(tag) != tag {
				t.Fatalf("%q shows as %s", tag, showETag(tag))
			}
		} else if n := len(showETag(tag)); n > 4*(maxErrorBytes+len("... (truncated)"))+2 {
			// strconv.Quote writes a byte as at most four.
			t.Fatalf("a refused ETag shows in %d bytes", n)
		}
		h := http.Header{}
		h.Set("Preference-Applied", applied)
		d, ok := appliedWait(h)
		if !ok && d != 0 {
			t.Fatalf("%q: not applied, but a wait of %s", applied, d)
		}
		if d < 0 || d > maxAppliedWait || d%time.Second != 0 {
			t.Fatalf("%q: a wait of %s", applied, d)
		}
	})
}
