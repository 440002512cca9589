package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/pemfile"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// backupDatabase is the name of the database snapshot in a backup: the
// name the server gives its SQLite database in a data directory, so that a
// backup directory is a data directory.
const backupDatabase = "meshfed.db"

// Backup writes, into a new directory, what restores this server: every
// regular file of its data directory (the CA and its rotation directories,
// the JWT key, the VirtualMesh intermediate; modes kept, so keys stay
// 0600) and a snapshot of its SQLite database taken while it serves. The
// files are written into a directory beside out_dir and renamed to it at
// the end, so out_dir is a whole backup or absent. The database's own files
// and sockets are not copied; a Postgres database is backed up with its own
// tools.
func (a *adminService) Backup(ctx context.Context, req *pb.BackupRequest) (*pb.BackupResponse, error) {
	s := a.s
	out := req.GetOutDir()
	if !filepath.IsAbs(out) {
		return nil, status.Errorf(codes.InvalidArgument, "server: out_dir %q: give an absolute path on the server's host", out)
	}
	out = filepath.Clean(out)
	if _, err := os.Lstat(out); err == nil {
		return nil, status.Errorf(codes.AlreadyExists, "server: %s already exists; a backup goes into a new directory", out)
	}
	if rel, err := filepath.Rel(s.set.dataDir, out); err == nil && !strings.HasPrefix(rel, "..") {
		return nil, status.Errorf(codes.InvalidArgument, "server: %s is inside the data directory %s; put the backup elsewhere", out, s.set.dataDir)
	}
	var suffix [4]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	tmp := out + ".partial-" + hex.EncodeToString(suffix[:])
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "server: backup: %v", err)
	}
	done := false
	defer func() {
		if !done {
			_ = os.RemoveAll(tmp)
		}
	}()
	// A root rotation's step renames the CA directories; none runs while
	// they are copied.
	s.rotateMu.Lock()
	files, err := copyDataDir(s.set.dataDir, tmp)
	s.rotateMu.Unlock()
	if err != nil {
		s.log.Error("backup failed", "out_dir", out, "error", err)
		return nil, status.Errorf(codes.Internal, "server: backup: %v", err)
	}
	resp := &pb.BackupResponse{}
	if s.store.Backend() == "sqlite" {
		if err := s.store.SnapshotTo(ctx, filepath.Join(tmp, backupDatabase)); err != nil {
			s.log.Error("backup failed", "out_dir", out, "error", err)
			return nil, status.Errorf(codes.Internal, "server: backup: %v", err)
		}
		files = append(files, backupDatabase)
	} else {
		resp.DatabaseNote = "the database is Postgres: back it up with pg_dump"
	}
	if err := pemfile.SyncDir(tmp); err != nil {
		return nil, status.Errorf(codes.Internal, "server: backup: %v", err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return nil, status.Errorf(codes.Internal, "server: backup: %v", err)
	}
	done = true
	if err := pemfile.SyncDir(filepath.Dir(out)); err != nil {
		return nil, status.Errorf(codes.Internal, "server: backup written to %s, but: %v", out, err)
	}
	resp.Files = files
	s.log.Info("backup written", "out_dir", out, "files", len(files))
	return resp, nil
}

// copyDataDir copies every regular file below dir into to, keeping relative
// paths and modes, and returns their relative paths. The SQLite database's
// files are left out (Backup snapshots the database instead), as are
// sockets and links.
func copyDataDir(dir, to string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		if d.IsDir() {
			return os.Mkdir(filepath.Join(to, rel), 0o700)
		}
		if !d.Type().IsRegular() || strings.HasPrefix(d.Name(), backupDatabase) {
			return nil
		}
		if err := copyFile(path, filepath.Join(to, rel)); err != nil {
			return err
		}
		files = append(files, rel)
		return nil
	})
	return files, err
}

// copyFile copies a regular file, its mode kept, and syncs the copy.
func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Sync(); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}
