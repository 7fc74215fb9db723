package kafka

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// groupRunner is one consumer-group membership on one topic. For every
// generation it reads each assigned partition and passes the records, in
// offset order, to handle.
//
// Kafka's group protocol (as kafka-go speaks it) revokes every partition at
// every rebalance. To keep a rebalance from ending every lease, the runner
// keeps a partition's state (what was read, what is settled) across
// generations when the next generation gives it the same partition and the
// group's committed offset is the one this runner committed; the sticky
// balancer below makes that the common case. A partition that moves to
// another member is lost: its unsettled deliveries fail with ErrLeaseLost
// and the new owner reads them again from the committed offset.
type groupRunner struct {
	b       *Broker
	groupID string
	topic   string
	// handle passes one record on; it returns false if it could not
	// (the generation ended first), and the record is read again later.
	handle func(gctx context.Context, ps *partState, epoch int, km kafkago.Message) bool
	// resume, if set, runs when a partition kept across a rebalance is
	// read again, before any new record; false stops the reader.
	resume func(gctx context.Context, ps *partState, epoch int) bool
	// fence, if > 0, is the queue's lease: a partition that comes from a
	// live member still holding records of it is not read until fence
	// after the generation started, when every lease that member held
	// has run out (see heldElsewhere).
	fence time.Duration

	group *kafkago.ConsumerGroup
	// commitMu serialises commits; callers waiting for it share the next.
	commitMu sync.Mutex
	// kick wakes commitLoop, which commits the marks that acks moved.
	kick   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	parts   map[int]*partState
	cur     *genState     // nil between generations
	ready   chan struct{} // closed while cur is set
	lastGen int32
	hadGen  bool
	// lostHeld: partitions lost while records of them were handed out,
	// with the time until which those deliveries' leases may run. They
	// are reported to the group as held until then.
	lostHeld map[int]time.Time
}

// partState is one partition owned by this runner.
type partState struct {
	r     *groupRunner
	p     int
	epoch int // bumped when the partition is lost; older deliveries are void

	pending   []int64 // offsets handed on and not yet below the mark, ascending
	done      map[int64]bool
	mark      int64 // offset below which everything is settled; -1 unknown
	committed int64 // last offset committed by this runner; -1 none
	next      int64 // next offset to read (or kafkago.FirstOffset)
	onLost    []func()
	slot      *slot // ordered queues: the record in flight
	// fencedUntil: no record is read before it (see groupRunner.fence).
	fencedUntil time.Time
}

type genState struct {
	gen    *kafkago.Generation
	ctx    context.Context // cancelled when the generation ends
	cancel context.CancelFunc
	start  time.Time

	heldOnce sync.Once
	held     map[int]bool // partitions other members report as held
	heldErr  error
}

func (b *Broker) startGroup(groupID, topic string, handle func(context.Context, *partState, int, kafkago.Message) bool,
	resume func(context.Context, *partState, int) bool, fence time.Duration) (*groupRunner, error) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &groupRunner{b: b, groupID: groupID, topic: topic, handle: handle, resume: resume, fence: fence, ctx: ctx, cancel: cancel,
		done: make(chan struct{}), parts: map[int]*partState{}, ready: make(chan struct{}), lostHeld: map[int]time.Time{},
		kick: make(chan struct{}, 1)}
	cg, err := kafkago.NewConsumerGroup(kafkago.ConsumerGroupConfig{
		ID:                groupID,
		Brokers:           b.cfg.Brokers,
		Dialer:            b.dialer,
		Topics:            []string{topic},
		GroupBalancers:    []kafkago.GroupBalancer{stickyBalancer{r}},
		HeartbeatInterval: b.cfg.HeartbeatInterval,
		SessionTimeout:    b.cfg.SessionTimeout,
		RebalanceTimeout:  b.cfg.SessionTimeout,
		// Jittered, so that members whose joins time out do not retry in
		// lockstep. A coordinator that restarts its rebalance wait on
		// every join (kfake does) never finishes a rebalance while joins
		// keep coming closer together than the rebalance timeout, and
		// members retrying on one fixed cycle can keep them that close
		// forever.
		JoinGroupBackoff: 500*time.Millisecond + rand.N(2500*time.Millisecond),
		StartOffset:      kafkago.FirstOffset,
		Timeout:          10 * time.Second,
		ErrorLogger: kafkago.LoggerFunc(func(f string, a ...any) {
			b.log.Debug("consumer group: "+fmt.Sprintf(f, a...), "group", groupID)
		}),
	})
	if err != nil {
		cancel()
		return nil, err
	}
	r.group = cg
	go r.run()
	go r.commitLoop()
	return r, nil
}

// commitSoon asks commitLoop to commit the marks that moved.
func (r *groupRunner) commitSoon() {
	select {
	case r.kick <- struct{}{}:
	default: // a commit is already due; it takes this mark too
	}
}

// commitLoop commits the marks that Ack moved, in the background: one
// request for every partition that moved since the last, so acks coming
// faster than a commit round trip share commits and do not wait for them.
func (r *groupRunner) commitLoop() {
	for {
		select {
		case <-r.kick:
		case <-r.ctx.Done():
			return
		}
		r.commitMarks(r.ctx)
	}
}

// commitMarks commits the current generation's marks that moved. A failed
// commit is tried again while the generation lasts (its end commits too:
// see run); between generations there is nothing to do until the next one
// starts, which commits what is left.
func (r *groupRunner) commitMarks(ctx context.Context) {
	for {
		r.mu.Lock()
		gs := r.cur
		r.mu.Unlock()
		if gs == nil {
			return
		}
		err := r.commitGen(gs)
		if err == nil || errors.Is(err, errGenEnded) {
			return
		}
		r.b.log.Debug("kafka: committing offsets failed; retrying", "group", r.groupID, "err", err)
		select {
		case <-gs.ctx.Done():
			return
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (r *groupRunner) run() {
	defer close(r.done)
	defer func() {
		r.mu.Lock()
		for p, ps := range r.parts {
			r.loseLocked(ps)
			delete(r.parts, p)
		}
		r.mu.Unlock()
	}()
	for {
		gen, err := r.group.Next(r.ctx)
		if err != nil {
			if r.ctx.Err() != nil || errors.Is(err, kafkago.ErrGroupClosed) {
				return
			}
			r.b.log.Debug("consumer group: waiting for the next generation", "group", r.groupID, "err", err)
			continue
		}
		gctx, gcancel := context.WithCancel(context.Background())
		gs := &genState{gen: gen, ctx: gctx, cancel: gcancel, start: time.Now()}
		assigned := gen.Assignments[r.topic]
		r.mu.Lock()
		follows := r.hadGen && gen.ID == r.lastGen+1
		keep := map[int]bool{}
		for _, pa := range assigned {
			ps := r.parts[pa.ID]
			if ps == nil || !follows {
				continue
			}
			switch off := max(pa.Offset, -1); {
			case off == ps.committed:
				keep[pa.ID] = true
			case off > ps.committed && off <= ps.mark:
				// A commit of ours landed though its call failed (the
				// connection broke after the broker applied it); only
				// we owned the partition, so the offset is ours.
				ps.committed = off
				keep[pa.ID] = true
			}
		}
		for p, ps := range r.parts {
			if !keep[p] {
				r.loseLocked(ps)
				delete(r.parts, p)
			}
		}
		var run []*partState
		fresh := map[*partState]bool{}
		for _, pa := range assigned {
			ps := r.parts[pa.ID]
			if ps == nil {
				start := max(pa.Offset, -1)
				ps = &partState{r: r, p: pa.ID, done: map[int64]bool{}, mark: start, committed: start, next: pa.Offset}
				r.parts[pa.ID] = ps
				fresh[ps] = true
			}
			run = append(run, ps)
		}
		r.cur = gs
		r.lastGen, r.hadGen = gen.ID, true
		close(r.ready)
		r.mu.Unlock()
		r.commitSoon() // marks acked between generations
		r.b.log.Debug("consumer group: generation started", "group", r.groupID, "generation", gen.ID,
			"partitions", len(assigned), "kept", len(keep))
		for _, ps := range run {
			gen.Start(func(gctx context.Context) { r.readPartition(gctx, gs, ps, fresh[ps]) })
		}
		gen.Start(func(gctx context.Context) {
			<-gctx.Done()
			// The group rejoins only once this returns: commit what was
			// acked, so a partition that moves carries its acks along.
			_ = r.commitGen(gs)
			r.mu.Lock()
			if r.cur == gs {
				r.cur = nil
				r.ready = make(chan struct{})
			}
			r.mu.Unlock()
			gcancel()
		})
	}
}

// loseLocked voids the partition's deliveries and delayed items.
func (r *groupRunner) loseLocked(ps *partState) {
	if r.fence > 0 && len(ps.pending) > 0 {
		// A handler may still be working on a record handed out before
		// the loss, until its lease runs out: say so at the next join.
		r.lostHeld[ps.p] = time.Now().Add(r.fence)
	}
	ps.epoch++
	ps.pending = nil
	ps.slot = nil
	clear(ps.done)
	fns := ps.onLost
	ps.onLost = nil
	for _, fn := range fns {
		go fn()
	}
}

func (r *groupRunner) readPartition(gctx context.Context, gs *genState, ps *partState, fresh bool) {
	if fresh && r.fence > 0 && r.heldElsewhere(gctx, gs, ps.p) {
		r.mu.Lock()
		ps.fencedUntil = gs.start.Add(r.fence)
		r.mu.Unlock()
	}
	r.mu.Lock()
	if until, ok := r.lostHeld[ps.p]; ok && fresh && until.After(ps.fencedUntil) {
		// This runner lost the partition with records out and got it
		// back without its state: its own handlers may still hold them.
		ps.fencedUntil = until
	}
	start, epoch, until := ps.next, ps.epoch, ps.fencedUntil
	r.mu.Unlock()
	if wait := time.Until(until); wait > 0 {
		r.b.log.Info("kafka: partition came from a member still holding records of it; waiting out their lease before reading it",
			"topic", r.topic, "partition", ps.p, "wait", wait.Round(time.Millisecond))
		if !sleepCtx(gctx, wait) {
			return
		}
	}
	rd := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:        r.b.cfg.Brokers,
		Dialer:         r.b.dialer,
		Topic:          r.topic,
		Partition:      ps.p,
		MinBytes:       1,
		MaxBytes:       maxBatchBytes * 4,
		MaxWait:        500 * time.Millisecond,
		QueueCapacity:  64,
		ReadBackoffMin: 50 * time.Millisecond,
		ReadBackoffMax: time.Second,
		ErrorLogger: kafkago.LoggerFunc(func(f string, a ...any) {
			r.b.log.Debug("partition reader: "+fmt.Sprintf(f, a...), "topic", r.topic, "partition", ps.p)
		}),
	})
	defer rd.Close()
	if r.resume != nil && !r.resume(gctx, ps, epoch) {
		<-gctx.Done() // as below: a closing consumer keeps its generation
		return
	}
	if err := rd.SetOffset(start); err != nil {
		r.b.log.Warn("partition reader: bad start offset", "topic", r.topic, "partition", ps.p, "offset", start, "err", err)
		<-gctx.Done()
		return
	}
	for {
		km, err := rd.FetchMessage(gctx)
		if err != nil {
			if gctx.Err() != nil {
				return
			}
			r.b.log.Warn("partition reader: fetch failed; retrying", "topic", r.topic, "partition", ps.p, "err", err)
			if !sleepCtx(gctx, 200*time.Millisecond) {
				return
			}
			continue
		}
		r.mu.Lock()
		if ps.epoch != epoch {
			r.mu.Unlock()
			return
		}
		ps.pending = append(ps.pending, km.Offset)
		r.mu.Unlock()
		ok := r.handle(gctx, ps, epoch, km)
		r.mu.Lock()
		if ps.epoch == epoch {
			if ok {
				ps.next = km.Offset + 1
			} else if n := len(ps.pending); n > 0 && ps.pending[n-1] == km.Offset {
				ps.pending = ps.pending[:n-1]
			}
		}
		r.mu.Unlock()
		if !ok {
			// The consumer is closing: keep the generation (and with it
			// the commits of the items it releases) until it leaves.
			<-gctx.Done()
			return
		}
		if gctx.Err() != nil {
			return
		}
	}
}

// heldElsewhere reports whether another live member of the group said, when
// it joined this generation, that it may still be working on records of
// partition p: it owned p with records handed out and not settled, or lost
// it so within one lease. Those records' leases are honoured: the caller
// does not read p until they have run out. A member that crashed is not in
// the group any more (its session timed out), so its partitions are read
// at once. If the group cannot be described, p counts as held.
func (r *groupRunner) heldElsewhere(ctx context.Context, gs *genState, p int) bool {
	gs.heldOnce.Do(func() {
		gs.held = map[int]bool{}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		resp, err := r.b.client.DescribeGroups(dctx, &kafkago.DescribeGroupsRequest{GroupIDs: []string{r.groupID}})
		if err == nil && len(resp.Groups) == 1 && resp.Groups[0].Error != nil {
			err = resp.Groups[0].Error
		}
		if err == nil && len(resp.Groups) != 1 {
			err = fmt.Errorf("DescribeGroups returned %d groups for one", len(resp.Groups))
		}
		if err != nil {
			gs.heldErr = err
			r.b.log.Warn("kafka: cannot describe the consumer group; waiting out one lease before reading partitions that moved",
				"group", r.groupID, "err", err)
			return
		}
		for _, m := range resp.Groups[0].Members {
			if m.MemberID == gs.gen.MemberID {
				continue
			}
			var d stickyData
			if json.Unmarshal(m.MemberMetadata.UserData, &d) != nil {
				continue
			}
			for _, q := range d.Held {
				gs.held[q] = true
			}
		}
	})
	return gs.heldErr != nil || gs.held[p]
}

// valid reports whether a record handed on in epoch is still this
// runner's to settle.
func (ps *partState) valid(epoch int) bool {
	ps.r.mu.Lock()
	defer ps.r.mu.Unlock()
	return ps.epoch == epoch
}

// whenLost runs fn when the partition is lost (at once if it has been).
func (ps *partState) whenLost(epoch int, fn func()) {
	ps.r.mu.Lock()
	if ps.epoch == epoch {
		ps.onLost = append(ps.onLost, fn)
		ps.r.mu.Unlock()
		return
	}
	ps.r.mu.Unlock()
	fn()
}

// settle marks one offset done, advances the partition's contiguous mark and
// commits it. It waits through a rebalance for the next generation; if that
// generation does not give the partition back, it fails with ErrLeaseLost.
func (ps *partState) settle(ctx context.Context, op string, epoch int, off int64) error {
	if err := ps.markDone(op, epoch, off); err != nil {
		return err
	}
	return ps.commit(ctx, op, epoch, off)
}

// markDone marks one offset done and advances the partition's contiguous
// mark; the mark is committed later (commitLoop, or a settle that waits).
// It fails with ErrLeaseLost if the partition was lost since epoch.
func (ps *partState) markDone(op string, epoch int, off int64) error {
	r := ps.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if ps.epoch != epoch {
		return lostErr(op)
	}
	ps.done[off] = true
	for len(ps.pending) > 0 && ps.done[ps.pending[0]] {
		delete(ps.done, ps.pending[0])
		ps.mark = ps.pending[0] + 1
		ps.pending = ps.pending[1:]
	}
	return nil
}

func (ps *partState) commit(ctx context.Context, op string, epoch int, off int64) error {
	r := ps.r
	for {
		r.mu.Lock()
		if off < ps.committed {
			r.mu.Unlock()
			return nil // durable
		}
		if ps.epoch != epoch {
			r.mu.Unlock()
			// A commit in flight when the partition was lost may still
			// have made it; let it land before saying the lease is lost.
			r.commitMu.Lock()
			r.commitMu.Unlock()
			r.mu.Lock()
			durable := off < ps.committed
			r.mu.Unlock()
			if durable || r.committedPast(ctx, ps.p, off) {
				return nil
			}
			return lostErr(op)
		}
		if ps.mark < 0 || ps.mark <= ps.committed {
			r.mu.Unlock()
			return nil
		}
		gs, ready := r.cur, r.ready
		r.mu.Unlock()
		if gs == nil {
			select {
			case <-ready:
				continue
			case <-ctx.Done():
				return ctx.Err()
			case <-r.ctx.Done():
				return adapters.Errorf(adapters.ErrClosed, op, "consumer is closed")
			}
		}
		err := r.commitGen(gs)
		if err == nil {
			continue
		}
		if errors.Is(err, errGenEnded) || gs.ctx.Err() != nil {
			continue // the generation ended meanwhile; wait for the next
		}
		// A rebalance or a broken coordinator connection ends the
		// generation soon; whether the partition stays ours (and the
		// commit is retried) is decided by the next one. An error that
		// does not end it within a session timeout is reported.
		t := time.NewTimer(r.b.cfg.SessionTimeout)
		select {
		case <-gs.ctx.Done():
			t.Stop()
			continue
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-r.ctx.Done():
			t.Stop()
			return adapters.Errorf(adapters.ErrClosed, op, "consumer is closed")
		case <-t.C:
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return mapCtxErr(ctx, op, fmt.Errorf("commit offsets: %w", err))
	}
}

// commitGen commits the marks of every partition that moved, in one
// request; concurrent callers queue on r.commitMu and share the next one.
func (r *groupRunner) commitGen(gs *genState) error {
	r.commitMu.Lock()
	defer r.commitMu.Unlock()
	r.mu.Lock()
	if r.cur != gs {
		r.mu.Unlock()
		return errGenEnded
	}
	offsets := map[int]int64{}
	states := map[int]*partState{}
	for p, ps := range r.parts {
		if ps.mark >= 0 && ps.mark > ps.committed {
			offsets[p] = ps.mark
			states[p] = ps
		}
	}
	r.mu.Unlock()
	if len(offsets) == 0 {
		return nil
	}
	if err := gs.gen.CommitOffsets(map[string]map[int]int64{r.topic: offsets}); err != nil {
		return err
	}
	// Recorded even if the partition was lost meanwhile: the commit
	// happened, and settle calls waiting on it must know.
	r.mu.Lock()
	for p, off := range offsets {
		if ps := states[p]; off > ps.committed {
			ps.committed = off
		}
	}
	r.mu.Unlock()
	return nil
}

var errGenEnded = errors.New("generation ended")

// committedPast asks the group coordinator whether the committed offset of
// partition p is past off. It settles the doubt left by a commit whose call
// failed just before the partition was lost: the broker may have applied
// it. Once the next generation exists, the old one's commits are refused,
// so the answer is final.
func (r *groupRunner) committedPast(ctx context.Context, p int, off int64) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := r.b.client.OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: r.groupID, Topics: map[string][]int{r.topic: {p}}})
	if err != nil || resp.Error != nil {
		return false
	}
	for _, pp := range resp.Topics[r.topic] {
		if pp.Partition == p && pp.Error == nil && pp.CommittedOffset > off {
			return true
		}
	}
	return false
}

// lostWhy says why a record's lease is lost when its partition is.
const lostWhy = "its partition was reassigned by a consumer-group rebalance"

func lostErr(op string) error {
	return adapters.Errorf(adapters.ErrLeaseLost, op, "%s", lostWhy)
}

// owned lists the partitions this runner owns now.
func (r *groupRunner) owned() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	ps := make([]int, 0, len(r.parts))
	for p := range r.parts {
		ps = append(ps, p)
	}
	return ps
}

// close leaves the group and waits for the partition readers to stop.
// close commits what was acked (at most closeCommitWait), then leaves the
// group.
func (r *groupRunner) close() {
	ctx, cancel := context.WithTimeout(context.Background(), closeCommitWait)
	r.commitMarks(ctx)
	cancel()
	r.cancel()
	_ = r.group.Close()
	<-r.done
}

// closeCommitWait bounds how long close tries to commit the last acks; an
// ack whose commit does not make it comes back (at-least-once).
const closeCommitWait = 5 * time.Second

// stickyBalancer keeps partitions with their owners across rebalances, so
// that a member joining or leaving does not end the leases of items held
// elsewhere. Each member reports the partitions it owns and which of them
// have unsettled records; the group leader keeps those first, up to a fair
// share per member, then hands out the rest.
type stickyBalancer struct{ r *groupRunner }

type stickyData struct {
	Owned []int `json:"owned"`
	Busy  []int `json:"busy"`
	// Held: partitions whose records this member may still be working
	// on (Busy, and those lost with records out within one lease).
	Held []int `json:"held,omitempty"`
}

func (stickyBalancer) ProtocolName() string { return "clusterbus-sticky" }

func (s stickyBalancer) UserData() ([]byte, error) {
	var d stickyData
	now := time.Now()
	s.r.mu.Lock()
	for p, ps := range s.r.parts {
		d.Owned = append(d.Owned, p)
		if len(ps.pending) > 0 {
			d.Busy = append(d.Busy, p)
			d.Held = append(d.Held, p)
		}
	}
	for p, until := range s.r.lostHeld {
		switch {
		case !now.Before(until):
			delete(s.r.lostHeld, p)
		case !slices.Contains(d.Held, p):
			d.Held = append(d.Held, p)
		}
	}
	s.r.mu.Unlock()
	return json.Marshal(d)
}

func (s stickyBalancer) AssignGroups(members []kafkago.GroupMember, partitions []kafkago.Partition) kafkago.GroupMemberAssignments {
	return assignSticky(s.r.topic, members, partitions)
}

func assignSticky(topic string, members []kafkago.GroupMember, partitions []kafkago.Partition) kafkago.GroupMemberAssignments {
	out := kafkago.GroupMemberAssignments{}
	if len(members) == 0 {
		return out
	}
	var ids []int
	for _, p := range partitions {
		if p.Topic == topic {
			ids = append(ids, p.ID)
		}
	}
	slices.Sort(ids)
	exists := map[int]bool{}
	for _, p := range ids {
		exists[p] = true
	}
	type member struct {
		id   string
		data stickyData
		got  []int
		want int
	}
	ms := make([]*member, len(members))
	for i, m := range members {
		ms[i] = &member{id: m.ID}
		_ = json.Unmarshal(m.UserData, &ms[i].data)
	}
	// Members with more busy partitions get the larger shares.
	slices.SortFunc(ms, func(a, b *member) int {
		if c := cmp.Compare(len(b.data.Busy), len(a.data.Busy)); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	base, extra := len(ids)/len(ms), len(ids)%len(ms)
	for i, m := range ms {
		m.want = base
		if i < extra {
			m.want++
		}
	}
	taken := map[int]bool{}
	keep := func(m *member, ps []int) {
		for _, p := range ps {
			if len(m.got) >= m.want {
				return
			}
			if exists[p] && !taken[p] {
				taken[p] = true
				m.got = append(m.got, p)
			}
		}
	}
	for _, m := range ms {
		keep(m, m.data.Busy)
	}
	for _, m := range ms {
		keep(m, m.data.Owned)
	}
	for _, m := range ms {
		keep(m, ids)
	}
	for _, m := range ms {
		slices.Sort(m.got)
		out[m.id] = map[string][]int{topic: m.got}
	}
	return out
}
