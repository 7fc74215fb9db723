package catalog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
)

// store keeps a node's copy of a catalog in its data dir: a snapshot
// (catalog-<name>.json, replaced atomically) and a journal of the changes
// since (catalog-<name>.log, one JSON entry per line).
type store struct {
	dir           string
	snap, journal string

	mu    sync.Mutex
	jf    *os.File
	jn    int // entries in the journal
	snapN int // entries in the snapshot
}

type snapshotFile struct {
	Version int     `json:"version"`
	Entries []Entry `json:"entries"`
}

func newStore(dir, name string) *store {
	return &store{
		dir:     dir,
		snap:    filepath.Join(dir, "catalog-"+name+".json"),
		journal: filepath.Join(dir, "catalog-"+name+".log"),
	}
}

// load reads the snapshot and the journal. A snapshot that does not decode
// is moved aside (.corrupt) and the node starts from the journal and its
// peers; a torn journal line is skipped.
func (s *store) load(log *slog.Logger) ([]Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return nil, fmt.Errorf("catalog: data dir: %w", err)
	}
	var out []Entry
	b, err := os.ReadFile(s.snap)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("catalog: read %s: %w", s.snap, err)
	default:
		var sf snapshotFile
		if err := json.Unmarshal(b, &sf); err != nil {
			log.Error("catalog: snapshot does not decode; moved aside, starting from the journal and the other nodes", "file", s.snap, "err", err)
			_ = os.Rename(s.snap, s.snap+".corrupt")
		} else {
			out = sf.Entries
			s.snapN = len(sf.Entries)
		}
	}
	f, err := os.Open(s.journal)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("catalog: read %s: %w", s.journal, err)
	default:
		r := bufio.NewReader(f)
		bad := 0
		for {
			line, err := r.ReadBytes('\n')
			if len(bytes.TrimSpace(line)) > 0 {
				var e Entry
				if json.Unmarshal(line, &e) == nil {
					out = append(out, e)
					s.jn++
				} else {
					bad++
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				_ = f.Close()
				return nil, fmt.Errorf("catalog: read %s: %w", s.journal, err)
			}
		}
		_ = f.Close()
		if bad > 0 {
			log.Warn("catalog: journal lines that do not decode skipped (a write torn by a crash)", "file", s.journal, "lines", bad)
		}
	}
	return out, nil
}

// append journals es; when the journal outgrows the snapshot it folds both
// into a new snapshot taken with snap.
func (s *store) append(es []Entry, snap func() []Entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.jf == nil {
		f, err := os.OpenFile(s.journal, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return err
		}
		s.jf = f
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, e := range es {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	if _, err := s.jf.Write(buf.Bytes()); err != nil {
		return err
	}
	s.jn += len(es)
	if s.jn > max(1024, s.snapN) {
		return s.compactLocked(snap())
	}
	return nil
}

// compact writes a snapshot taken with snap and empties the journal.
func (s *store) compact(snap func() []Entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.compactLocked(snap())
}

// close closes the journal.
func (s *store) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.jf != nil {
		_ = s.jf.Close()
		s.jf = nil
	}
}

func (s *store) compactLocked(es []Entry) error {
	if err := writeAtomic(s.snap, snapshotFile{Version: 1, Entries: es}); err != nil {
		return err
	}
	if s.jf != nil {
		_ = s.jf.Close()
		s.jf = nil
	}
	if err := os.Truncate(s.journal, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	s.jn, s.snapN = 0, len(es)
	return nil
}

// writeAtomic writes v as JSON to a temporary file in path's directory,
// syncs it and renames it over path.
func writeAtomic(path string, v any) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }()
	w := bufio.NewWriter(f)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		_ = f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
