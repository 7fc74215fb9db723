package flows

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/catalog"
	"github.com/clusterbus/clusterbus/workqueue"
)

// DefinitionsCatalog is the name of the catalog that holds deployed flow
// definitions (Options.Definitions).
const DefinitionsCatalog = "flows"

// ImmutableDefinition reports the keys of the definitions catalog that are
// written once, the versions ("def/NAME/VERSION"): pass it as
// catalog.Config.FirstWriteWins when opening Options.Definitions.
func ImmutableDefinition(key string) bool { return strings.HasPrefix(key, defPrefix) }

const (
	defPrefix  = "def/"
	headPrefix = "head/"
	// definitionWait bounds how long a node waits for the catalog to
	// answer: a deploy for conflicting writes, a step or a submission for
	// a version it does not have, a seed for the peers' entries.
	definitionWait = 2 * time.Second
	// deployWait bounds how long Deploy waits to see a concurrent deploy
	// of the same version with other content.
	deployWait = time.Second
	// missingDelayMax caps the delay before an item whose version is
	// missing here is tried again.
	missingDelayMax = 30 * time.Second
)

func defKey(name string, v int) string { return defPrefix + name + "/" + strconv.Itoa(v) }
func headKey(name string) string       { return headPrefix + name }

type headValue struct {
	Version int `json:"version"`
}

// Deployment is what Deploy did with one flow of its source.
type Deployment struct {
	Flow    string `json:"flow"`
	Version int    `json:"version"`
	// Created is false when that exact content was deployed already
	// (nothing was written but, at most, the head).
	Created bool `json:"created"`
	// Head reports whether the version is now the one new submissions use.
	Head bool `json:"head"`
}

// Version is one deployed version of a flow.
type Version struct {
	Version int  `json:"version"`
	Head    bool `json:"head"`
	// Deployed is the deploying node's clock when it wrote the version, and
	// Node that node.
	Deployed time.Time `json:"deployed"`
	Node     string    `json:"node"`
	Size     int       `json:"size"`
	// Error says why this node could not compile the version (a step kind
	// its build does not know, say); such a version runs on the nodes that
	// can.
	Error string `json:"error,omitempty"`
}

// FlowVersions are a flow's deployed versions.
type FlowVersions struct {
	Flow string `json:"flow"`
	// Head is the version new submissions use; 0 once undeployed.
	Head     int       `json:"head"`
	Versions []Version `json:"versions"`
}

// deployedFlow is what this node knows of a deployed flow (under e.mu).
type deployedFlow struct {
	head     int
	versions map[int]*deployedVersion
}

type deployedVersion struct {
	rev catalog.Rev
	err error
}

// DeployOption tunes Deploy.
type DeployOption func(*deployOpts)

type deployOpts struct {
	file string
	seed bool
}

// DeployFrom names the source in messages (a file name).
func DeployFrom(file string) DeployOption { return func(o *deployOpts) { o.file = file } }

// Deploy validates and compiles the flows of a YAML source (one or more
// flow documents; rules cannot be deployed) and deploys each to the
// cluster as an immutable version: its document, stored in the definitions
// catalog under "def/NAME/VERSION". The version is the document's
// "version:" if it has one (an error matching catalog.ErrConflict if that
// version holds other content; nothing to do if the same), else one more
// than the highest deployed (nothing to do if a version holds exactly this
// content). A version it creates becomes the head ("head/NAME", what new
// submissions use) unless the head is higher; deploying the content of an
// existing version makes that version the head again (after a rollback or
// an undeploy, or when an earlier deploy failed before it could move the
// head): deploy means "run this". Deploy then syncs
// with the other nodes for up to a second and reports a version that
// another node deployed concurrently with other content, and won (see the
// package doc), as a conflict.
func (e *Engine) Deploy(ctx context.Context, source []byte, opts ...DeployOption) ([]Deployment, error) {
	var o deployOpts
	for _, fn := range opts {
		fn(&o)
	}
	if e.defs == nil {
		return nil, adapters.Errorf(adapters.ErrUnavailable, "flows: deploy", "this engine has no definitions catalog")
	}
	defs, err := Parse(cmp.Or(o.file, "deploy"), source)
	if err != nil {
		return nil, err
	}
	if len(defs.Rules) > 0 {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, "flows: deploy", "%s defines rules (%s): only flows can be deployed; load rules from flows.dir", cmp.Or(o.file, "the source"), defs.Rules[0].Name)
	}
	if len(defs.Flows) == 0 {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, "flows: deploy", "%s defines no flow", cmp.Or(o.file, "the source"))
	}
	return e.deploy(ctx, defs.Flows, o)
}

func (e *Engine) deploy(ctx context.Context, fs []*Flow, o deployOpts) ([]Deployment, error) {
	seen := map[string]bool{}
	for _, f := range fs {
		if seen[f.Name] {
			return nil, adapters.Errorf(adapters.ErrInvalidArgument, "flows: deploy", "flow %q is defined twice", f.Name)
		}
		seen[f.Name] = true
		if len(f.YAML) == 0 {
			return nil, adapters.Errorf(adapters.ErrInvalidArgument, "flows: deploy", "flow %q has no YAML source", f.Name)
		}
	}
	out := make([]Deployment, len(fs))
	var errs []error
	created := false
	for i, f := range fs {
		d, err := e.putVersion(ctx, f)
		out[i] = d
		if err != nil {
			errs = append(errs, err)
			continue
		}
		created = created || d.Created
	}
	if created {
		// A concurrent deploy of the same version with other content: the
		// lowest Rev wins on every node. See it now if it is out there.
		sctx, cancel := context.WithTimeout(ctx, deployWait)
		_ = e.defs.Sync(sctx)
		cancel()
	}
	for i, f := range fs {
		d := &out[i]
		if d.Version == 0 {
			continue // failed above
		}
		key := defKey(f.Name, d.Version)
		if ent, ok := e.defs.Get(key); !ok || !bytes.Equal(ent.Value, f.YAML) {
			errs = append(errs, fmt.Errorf("flows: deploy: version %d of flow %q was deployed concurrently with other content by node %s, which won: %w; deploy again (an unversioned file becomes the next version)",
				d.Version, f.Name, ent.Rev.Node, catalog.ErrConflict))
			d.Version, d.Created = 0, false
			continue
		}
		e.applyDefinition(key)
		e.applyDefinition(headKey(f.Name)) // the catalog's head now, synced or not delivered yet
		head := e.head(f.Name)
		switch {
		case d.Created && head < d.Version, !o.seed && !d.Created && head != d.Version:
			if err := e.putHead(ctx, f.Name, d.Version); err != nil {
				errs = append(errs, err)
				continue
			}
			d.Head = true
		default:
			d.Head = head == d.Version
		}
		e.log.Info("flows: flow deployed", "flow", f.Name, "version", d.Version, "created", d.Created, "head", d.Head, "source", o.file)
	}
	kept := out[:0]
	for _, d := range out {
		if d.Version != 0 {
			kept = append(kept, d)
		}
	}
	return kept, errors.Join(errs...)
}

// putVersion writes f as a version of its flow, unless it is there.
func (e *Engine) putVersion(ctx context.Context, f *Flow) (Deployment, error) {
	d := Deployment{Flow: f.Name}
	existing := e.storedVersions(f.Name)
	if f.versioned {
		if ent, ok := existing[f.Version]; ok {
			if !bytes.Equal(ent.Value, f.YAML) {
				return d, fmt.Errorf("flows: deploy: flow %q version %d: %w: that version is deployed with other content (versions are immutable: give the file a new version, or none)", f.Name, f.Version, catalog.ErrConflict)
			}
			d.Version = f.Version
			return d, nil
		}
		if _, err := e.defs.Put(ctx, defKey(f.Name, f.Version), f.YAML); err != nil {
			return d, fmt.Errorf("flows: deploy flow %q version %d: %w", f.Name, f.Version, err)
		}
		d.Version, d.Created = f.Version, true
		return d, nil
	}
	latest := 0
	for v, ent := range existing {
		if bytes.Equal(ent.Value, f.YAML) && (d.Version == 0 || v < d.Version) {
			d.Version = v
		}
		latest = max(latest, v)
	}
	if d.Version != 0 {
		return d, nil
	}
	for v := latest + 1; v <= latest+5; v++ {
		_, err := e.defs.Put(ctx, defKey(f.Name, v), f.YAML)
		if errors.Is(err, catalog.ErrConflict) {
			continue // another deploy took v meanwhile: take the next
		}
		if err != nil {
			return d, fmt.Errorf("flows: deploy flow %q version %d: %w", f.Name, v, err)
		}
		d.Version, d.Created = v, true
		return d, nil
	}
	return d, fmt.Errorf("flows: deploy flow %q: %w: versions %d to %d were taken meanwhile", f.Name, catalog.ErrConflict, latest+1, latest+5)
}

// storedVersions reads a flow's versions from the catalog.
func (e *Engine) storedVersions(name string) map[int]catalog.Entry {
	out := map[int]catalog.Entry{}
	for _, ent := range e.defs.List(defPrefix + name + "/") {
		if n, v, ok := parseDefKey(ent.Key); ok && n == name {
			out[v] = ent
		}
	}
	return out
}

func parseDefKey(key string) (string, int, bool) {
	rest, ok := strings.CutPrefix(key, defPrefix)
	if !ok {
		return "", 0, false
	}
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		return "", 0, false
	}
	v, err := strconv.Atoi(rest[i+1:])
	if err != nil || v < 1 {
		return "", 0, false
	}
	return rest[:i], v, true
}

func (e *Engine) putHead(ctx context.Context, name string, v int) error {
	b, _ := json.Marshal(headValue{Version: v})
	if _, err := e.defs.Put(ctx, headKey(name), b); err != nil {
		return fmt.Errorf("flows: flow %q: make version %d the head: %w", name, v, err)
	}
	e.applyDefinition(headKey(name))
	return nil
}

// head is the flow's head version as this node knows it, 0 for none.
func (e *Engine) head(name string) int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if d := e.deployed[name]; d != nil {
		return d.head
	}
	return 0
}

// Versions lists the deployed versions of flow name, oldest first, as this
// node's copy of the definitions catalog has them.
func (e *Engine) Versions(name string) (FlowVersions, error) {
	if e.defs == nil {
		return FlowVersions{}, adapters.Errorf(adapters.ErrUnavailable, "flows: versions", "this engine has no definitions catalog")
	}
	stored := e.storedVersions(name)
	if len(stored) == 0 {
		return FlowVersions{}, errorf(ErrFlowNotFound, "flows: versions", "flow %q was never deployed", name)
	}
	fv := FlowVersions{Flow: name, Head: e.head(name)}
	e.mu.RLock()
	d := e.deployed[name]
	for v, ent := range stored {
		ver := Version{Version: v, Head: v == fv.Head, Deployed: ent.At, Node: ent.Rev.Node, Size: len(ent.Value)}
		if d != nil && d.versions[v] != nil && d.versions[v].err != nil {
			ver.Error = d.versions[v].err.Error()
		}
		fv.Versions = append(fv.Versions, ver)
	}
	e.mu.RUnlock()
	sort.Slice(fv.Versions, func(i, j int) bool { return fv.Versions[i].Version < fv.Versions[j].Version })
	return fv, nil
}

// Deployed lists every deployed flow (undeployed ones with head 0).
func (e *Engine) Deployed() []FlowVersions {
	if e.defs == nil {
		return nil
	}
	names := map[string]bool{}
	for _, ent := range e.defs.List(defPrefix) {
		if n, _, ok := parseDefKey(ent.Key); ok {
			names[n] = true
		}
	}
	var out []FlowVersions
	for _, n := range slices.Sorted(func(yield func(string) bool) {
		for n := range names {
			if !yield(n) {
				return
			}
		}
	}) {
		if fv, err := e.Versions(n); err == nil {
			out = append(out, fv)
		}
	}
	return out
}

// Source returns the YAML of a deployed version.
func (e *Engine) Source(name string, version int) ([]byte, error) {
	if e.defs == nil {
		return nil, adapters.Errorf(adapters.ErrUnavailable, "flows: source", "this engine has no definitions catalog")
	}
	ent, ok := e.defs.Get(defKey(name, version))
	if !ok {
		return nil, errorf(ErrFlowNotFound, "flows: source", "flow %q has no version %d", name, version)
	}
	return ent.Value, nil
}

// Rollback makes a deployed version of flow name the head again: new
// submissions use it; running executions keep theirs.
func (e *Engine) Rollback(ctx context.Context, name string, version int) error {
	if e.defs == nil {
		return adapters.Errorf(adapters.ErrUnavailable, "flows: rollback", "this engine has no definitions catalog")
	}
	if _, ok := e.defs.Get(defKey(name, version)); !ok {
		return errorf(ErrFlowNotFound, "flows: rollback", "flow %q has no version %d", name, version)
	}
	e.applyDefinition(defKey(name, version))
	e.mu.RLock()
	var cerr error
	if d := e.deployed[name]; d != nil && d.versions[version] != nil {
		cerr = d.versions[version].err
	}
	e.mu.RUnlock()
	if cerr != nil {
		return adapters.Errorf(adapters.ErrInvalidArgument, "flows: rollback", "flow %q version %d does not compile on this node: %v", name, version, cerr)
	}
	if err := e.putHead(ctx, name, version); err != nil {
		return err
	}
	e.log.Info("flows: flow rolled back", "flow", name, "version", version)
	return nil
}

// Undeploy removes the head of flow name (a tombstone): new submissions of
// it are refused; running executions end on their versions, which stay
// stored (a later Deploy or Rollback brings the flow back).
func (e *Engine) Undeploy(ctx context.Context, name string) error {
	if e.defs == nil {
		return adapters.Errorf(adapters.ErrUnavailable, "flows: undeploy", "this engine has no definitions catalog")
	}
	if len(e.storedVersions(name)) == 0 {
		return errorf(ErrFlowNotFound, "flows: undeploy", "flow %q was never deployed", name)
	}
	if _, err := e.defs.Delete(ctx, headKey(name)); err != nil {
		return fmt.Errorf("flows: undeploy %q: %w", name, err)
	}
	e.applyDefinition(headKey(name))
	e.log.Info("flows: flow undeployed", "flow", name)
	return nil
}

// Seed deploys the flows of the YAML files in dir whose exact content is
// not deployed yet, and registers the files' rules on this node (as
// LoadDir does). Unless its copy of the catalog holds every file's content
// already, it first syncs with the other nodes (up to two seconds), so
// that a node starting with the files its peers deployed creates nothing: N nodes seeding the same directory create one version of each
// flow (and if they do it at the same moment, they write the same content
// under the same key, which is no conflict). A file's content that is
// deployed already does not move the head, so a rollback or an undeploy
// survives restarts.
func (e *Engine) Seed(ctx context.Context, dir string) ([]Deployment, error) {
	defs, err := CheckDir(dir)
	if err != nil {
		return nil, err
	}
	for _, r := range defs.Rules {
		if err := e.RegisterRule(r); err != nil {
			return nil, err
		}
	}
	if len(defs.Flows) == 0 {
		return nil, nil
	}
	if e.defs == nil {
		return nil, adapters.Errorf(adapters.ErrUnavailable, "flows: seed", "this engine has no definitions catalog")
	}
	if !e.allStored(defs.Flows) {
		// Something would be created: hear from the other nodes first, so
		// as not to create what they deployed already.
		sctx, cancel := context.WithTimeout(ctx, definitionWait)
		_ = e.defs.Sync(sctx)
		cancel()
	}
	var out []Deployment
	var errs []error
	for _, f := range defs.Flows {
		ds, err := e.deploy(ctx, []*Flow{f}, deployOpts{file: f.Source, seed: true})
		out = append(out, ds...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// allStored reports whether this node's copy of the catalog holds the
// exact content of every flow of fs as some version.
func (e *Engine) allStored(fs []*Flow) bool {
	for _, f := range fs {
		found := false
		for v, ent := range e.storedVersions(f.Name) {
			if bytes.Equal(ent.Value, f.YAML) && (!f.versioned || v == f.Version) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// watchDefinitions compiles what the definitions catalog holds and every
// change it delivers.
func (e *Engine) watchDefinitions() {
	e.defStop = e.defs.Watch(func(ent catalog.Entry) { e.applyDefinition(ent.Key) })
	for _, ent := range e.defs.List(headPrefix) {
		e.applyDefinition(ent.Key)
	}
	for _, ent := range e.defs.List(defPrefix) {
		e.applyDefinition(ent.Key)
	}
}

// applyDefinition brings this node's compiled flows in line with the
// catalog's current entry for key (whatever was delivered: the catalog
// holds the winner).
func (e *Engine) applyDefinition(key string) {
	ent, ok := e.defs.Get(key)
	if name, ok2 := strings.CutPrefix(key, headPrefix); ok2 {
		head := 0
		if ok {
			var hv headValue
			if err := json.Unmarshal(ent.Value, &hv); err != nil || hv.Version < 1 {
				e.log.Warn("flows: ignoring a flow head that does not decode", "key", key, "err", err)
				return
			}
			head = hv.Version
		}
		e.mu.Lock()
		d := e.deployedLocked(name)
		changed := d.head != head
		d.head = head
		e.mu.Unlock()
		if changed {
			e.log.Info("flows: flow head changed", "flow", name, "version", head)
		}
		return
	}
	name, v, okKey := parseDefKey(key)
	if !okKey || !ok {
		return
	}
	e.mu.RLock()
	if d := e.deployed[name]; d != nil && d.versions[v] != nil && d.versions[v].rev == ent.Rev {
		e.mu.RUnlock()
		return
	}
	e.mu.RUnlock()
	f, err := compileDefinition(name, v, ent.Value)
	e.mu.Lock()
	d := e.deployedLocked(name)
	if dv := d.versions[v]; dv != nil && dv.rev == ent.Rev {
		e.mu.Unlock()
		return
	}
	d.versions[v] = &deployedVersion{rev: ent.Rev, err: err}
	if err == nil {
		f = f.prepared()
		if e.flows[name] == nil {
			e.flows[name] = map[int]*Flow{}
		}
		e.flows[name][v] = f
		e.m.initFlow(f)
	} else {
		delete(e.flows[name], v)
	}
	e.mu.Unlock()
	if err != nil {
		e.log.Error("flows: a deployed flow version does not compile on this node; its steps run on the nodes that can", "flow", name, "version", v, "err", err)
		return
	}
	e.log.Info("flows: flow version compiled", "flow", name, "version", v, "deployed_by", ent.Rev.Node)
}

func (e *Engine) deployedLocked(name string) *deployedFlow {
	d := e.deployed[name]
	if d == nil {
		d = &deployedFlow{versions: map[int]*deployedVersion{}}
		e.deployed[name] = d
	}
	return d
}

// compileDefinition compiles a stored version: one flow document named
// name; its version is the key's.
func compileDefinition(name string, v int, src []byte) (*Flow, error) {
	defs, err := Parse(fmt.Sprintf("%s@%d", name, v), src)
	if err != nil {
		return nil, err
	}
	if len(defs.Flows) != 1 || len(defs.Rules) != 0 || defs.Flows[0].Name != name {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, "flows: definition", "%s@%d: want one flow document named %q", name, v, name)
	}
	f := defs.Flows[0]
	if f.versioned && f.Version != v {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, "flows: definition", "%s@%d: the document says version %d", name, v, f.Version)
	}
	f.Version = v
	return f, nil
}

// undeployed reports whether name is a deployed flow whose head was
// removed (Undeploy).
func (e *Engine) undeployed(name string) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	d := e.deployed[name]
	return d != nil && len(d.versions) > 0 && d.head == 0
}

// lookupDeployed is lookup's answer for a deployed flow: ok2 is false if
// name is not a deployed flow (lookup then looks at registered ones).
// Under e.mu (read).
func (e *Engine) lookupDeployedLocked(name string, version int) (f *Flow, ok, deployed bool) {
	d := e.deployed[name]
	if d == nil || len(d.versions) == 0 {
		return nil, false, false
	}
	if version == 0 {
		version = d.head
	}
	f, ok = e.flows[name][version]
	return f, ok, true
}

// fetchFlow is for a version this node does not have (yet): it asks the
// other nodes for the catalog's entries (one sync at a time per node, up
// to two seconds) and looks again.
func (e *Engine) fetchFlow(ctx context.Context, name string, version int) (*Flow, bool) {
	if e.defs == nil {
		return nil, false
	}
	e.syncDefinitions(ctx)
	if version == 0 {
		e.applyDefinition(headKey(name))
		version = e.head(name)
	}
	if version > 0 {
		e.applyDefinition(defKey(name, version))
	}
	return e.lookup(name, version)
}

// syncDefinitions runs one catalog Sync for every caller that arrives
// while it runs, and waits for it (or ctx).
func (e *Engine) syncDefinitions(ctx context.Context) {
	e.syncMu.Lock()
	ch := e.syncCh
	if ch == nil {
		ch = make(chan struct{})
		e.syncCh = ch
		e.answers.Add(1)
		go func() {
			defer e.answers.Done()
			sctx, cancel := context.WithTimeout(context.Background(), definitionWait)
			_ = e.defs.Sync(sctx)
			cancel()
			e.syncMu.Lock()
			e.syncCh = nil
			e.syncMu.Unlock()
			close(ch)
		}()
	}
	e.syncMu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// definitionMissing settles an item whose flow version this node does not
// have even after a sync: it is tried again after a delay (1s, doubling,
// at most 30s), on whichever node takes it. Never dead-lettered for that:
// on its last attempt the node puts a fresh copy back on the queue (a new
// message ID, fresh attempts, due after the delay) and acknowledges it.
func (e *Engine) definitionMissing(ctx context.Context, job *workqueue.Job, it *item) error {
	delay := min(time.Second<<min(max(job.Attempt-1, 0), 5), missingDelayMax)
	why := "not deployed"
	e.mu.RLock()
	if d := e.deployed[it.Flow]; d != nil && d.versions[it.Version] != nil && d.versions[it.Version].err != nil {
		why = "does not compile here: " + d.versions[it.Version].err.Error()
	}
	e.mu.RUnlock()
	err := fmt.Errorf("flows: %s: flow %q version %d %s on node %s (after a sync with the other nodes); trying again in %s",
		it.id(), it.Flow, it.Version, why, e.opts.NodeID, delay)
	now := e.opts.Clock.Now()
	e.rec.update(it.Exec, func(r *record) {
		if r.Flow == "" {
			r.Flow, r.Version, r.Started = it.Flow, it.Version, it.Started
		}
		r.Steps = unionSteps(r.Steps, []StepRecord{{Step: it.Step, Seq: it.Seq, Attempt: job.Attempt, Node: e.opts.NodeID,
			Outcome: StepRetried, Started: now, Ended: now, Error: err.Error()}})
		if !ended(r.State) && r.Retries == it.Gen {
			r.Error = err.Error()
		}
	})
	if job.Attempt < job.MaxAttempts {
		e.log.Warn("flows: an item's flow version is missing here; trying again later", "item", it.id(), "flow", it.Flow,
			"version", it.Version, "attempt", job.Attempt, "delay", delay, "why", why)
		return workqueue.RetryAfter(delay, err)
	}
	cp := *it
	cp.NotBefore = e.opts.Clock.Now().Add(delay)
	body, merr := json.Marshal(&cp)
	if merr != nil {
		return workqueue.Permanent(fmt.Errorf("flows: encode state of %s: %w", it.id(), merr))
	}
	suffix := fmt.Sprintf("~await-%d", e.opts.Clock.Now().UnixMilli())
	id := job.Message.ID
	if i := strings.Index(id, "~await-"); i >= 0 {
		id = id[:i]
	}
	id = id[:min(len(id), 128-len(suffix))] + suffix
	if qerr := e.b.Enqueue(ctx, e.cfg.Queue, adapters.Message{ID: id, Key: it.Exec, Body: body}); qerr != nil {
		return fmt.Errorf("%w; putting a fresh copy back failed: %v", err, qerr)
	}
	e.log.Warn("flows: an item's flow version is still missing after its last attempt; put a fresh copy back on the queue",
		"item", it.id(), "flow", it.Flow, "version", it.Version, "new_id", id, "due_in", delay, "why", why)
	return nil
}
