package store_test

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshfed/meshfed/internal/store"
)

// TestFederatedBundles: set, get, list, replace, delete; storing the same
// JSON again changes neither UpdatedAt nor the revision.
func TestFederatedBundles(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		v1, v2 := []byte(`{"keys":[],"spiffe_sequence":1}`), []byte(`{"keys":[],"spiffe_sequence":2}`)
		if err := d.s.SetFederatedBundle(ctx, west, v1); err != nil {
			t.Fatal(err)
		}
		if err := d.s.SetFederatedBundle(ctx, north, v1); err != nil {
			t.Fatal(err)
		}
		d.clock.Advance(time.Minute)
		if err := d.s.SetFederatedBundle(ctx, west, v1); err != nil { // a refresh that found nothing new
			t.Fatal(err)
		}
		wantWest := store.Bundle{TrustDomain: west, JSON: v1, UpdatedAt: t0}
		if got, err := d.s.FederatedBundle(ctx, west); err != nil || !reflect.DeepEqual(got, wantWest) {
			t.Errorf("FederatedBundle after same JSON:\n got %+v, %v\nwant %+v", got, err, wantWest)
		}
		if rev := mustRevision(t, d.s); rev != 2 {
			t.Errorf("Revision after setting the same JSON = %d, want 2", rev)
		}

		if err := d.s.SetFederatedBundle(ctx, west, v2); err != nil {
			t.Fatal(err)
		}
		wantWest = store.Bundle{TrustDomain: west, JSON: v2, UpdatedAt: t0.Add(time.Minute)}
		if got, err := d.s.FederatedBundle(ctx, west); err != nil || !reflect.DeepEqual(got, wantWest) {
			t.Errorf("FederatedBundle after new JSON:\n got %+v, %v\nwant %+v", got, err, wantWest)
		}
		wantNorth := store.Bundle{TrustDomain: north, JSON: v1, UpdatedAt: t0}
		if got, err := d.s.ListFederatedBundles(ctx); err != nil || !reflect.DeepEqual(got, []store.Bundle{wantNorth, wantWest}) {
			t.Errorf("ListFederatedBundles:\n got %+v, %v\nwant %+v", got, err, []store.Bundle{wantNorth, wantWest})
		}

		if err := d.s.DeleteFederatedBundle(ctx, north); err != nil {
			t.Fatal(err)
		}
		_, err := d.s.FederatedBundle(ctx, north)
		checkErr(t, "FederatedBundle after delete", err, `store: federated bundle of "north.example": not found`)
		err = d.s.DeleteFederatedBundle(ctx, north)
		checkErr(t, "DeleteFederatedBundle twice", err, `store: federated bundle of "north.example": not found`)
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%v is not ErrNotFound", err)
		}
		if got, err := d.s.ListFederatedBundles(ctx); err != nil || !reflect.DeepEqual(got, []store.Bundle{wantWest}) {
			t.Errorf("ListFederatedBundles after delete: %+v, %v", got, err)
		}
	})
}

// TestSetFederatedBundleRefuses: no trust domain, empty, oversized or
// non-JSON bundles.
func TestSetFederatedBundleRefuses(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		big := append(append([]byte(`"`), bytes.Repeat([]byte("a"), store.MaxBundleBytes-1)...), '"')
		tests := []struct {
			name string
			td   spiffeid.TrustDomain
			json []byte
			want string
		}{
			{"no trust domain", spiffeid.TrustDomain{}, []byte(`{}`), "store: federated bundle has no trust domain"},
			{"empty", west, nil, "store: federated bundle of west.example is empty"},
			{"over 1 MiB", west, big, "store: federated bundle of west.example is 1048577 bytes, more than the 1048576 allowed"},
			{"not JSON", west, []byte(`-----BEGIN CERTIFICATE-----`), "store: federated bundle of west.example is not JSON"},
		}
		for _, tt := range tests {
			err := d.s.SetFederatedBundle(context.Background(), tt.td, tt.json)
			checkErr(t, tt.name, err, tt.want)
			if !errors.Is(err, store.ErrInvalid) {
				t.Errorf("%s: %v is not ErrInvalid", tt.name, err)
			}
		}
		// Exactly 1 MiB is accepted.
		exact := append(append([]byte(`"`), bytes.Repeat([]byte("a"), store.MaxBundleBytes-2)...), '"')
		if err := d.s.SetFederatedBundle(context.Background(), west, exact); err != nil {
			t.Errorf("a JSON bundle of exactly 1 MiB: %v", err)
		}
	})
}
