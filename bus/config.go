package bus

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// SplitBrain names a split-brain policy: what a node does when it can see
// only part of the cluster.
type SplitBrain string

const (
	// KeepMajority keeps serving the side that sees more than half of the
	// known members; with exactly half, the side holding the oldest known
	// member survives. The default.
	KeepMajority SplitBrain = "keep-majority"
	// KeepOldest keeps serving the side that holds the oldest known member.
	KeepOldest SplitBrain = "keep-oldest"
	// StaticQuorum keeps serving a side that sees at least Config.Quorum
	// live members (itself included).
	StaticQuorum SplitBrain = "static-quorum"
	// SplitBrainOff never stops a node because of what it sees; only a
	// lost broker link or a cluster panic does.
	SplitBrainOff SplitBrain = "off"
)

// BrokerLoss names what a node does while it has lost its broker.
type BrokerLoss string

const (
	// FenceOnBrokerLoss: the node stops serving (503 on health, no lead,
	// no work) until its link is back. The default, and the right choice
	// when a node's work needs the broker or the other nodes (it cannot
	// run flows or lead duties without them anyway).
	FenceOnBrokerLoss BrokerLoss = "fence"
	// DegradeOnBrokerLoss: the node keeps answering 200 on health, with a
	// "degraded" reason, so a load balancer keeps sending it the requests
	// it can answer alone; meanwhile every Cache read misses (no
	// invalidation can reach it), it holds no lead and takes no work, and
	// flow submissions are refused (503). For applications whose requests
	// mostly do not need the cluster, where a broker outage must not be a
	// total outage.
	DegradeOnBrokerLoss BrokerLoss = "degrade"
)

// Config is a node's settings. Start from DefaultConfig; Validate checks the
// fields together.
type Config struct {
	// Cluster names the cluster; nodes with the same name on the same
	// broker form one cluster. Letters, digits, '-' and '_', at most 40.
	Cluster string
	// NodeID identifies this node. Empty means a random ID, fixed for the
	// life of the process.
	NodeID string
	// Host and IP describe the node in the status; empty means detected.
	Host, IP string
	// Version is the application version shown in the status.
	Version string
	// HTTPAddr is the address (such as http://10.0.0.5:8080) where this
	// node serves its HTTP endpoints, told to the other members for the
	// status page. Empty tells none.
	HTTPAddr string

	// HeartbeatInterval is how often the node announces itself.
	HeartbeatInterval time.Duration
	// FailureTimeout is how long a member stays live without a heartbeat.
	// It must be more than twice HeartbeatInterval. A new node waits one
	// FailureTimeout before it may claim the lead.
	FailureTimeout time.Duration
	// ForgetAfter is how long a member that stopped without a leave stays
	// in the known membership that split-brain policies count against.
	// Zero means 20 × FailureTimeout; after it, a lone minority resumes.
	ForgetAfter time.Duration
	// ClockSkewThreshold flags a member whose clock differs from the
	// cluster median by more than this.
	ClockSkewThreshold time.Duration

	// SplitBrain is the split-brain policy; Quorum is its N for
	// StaticQuorum.
	SplitBrain SplitBrain
	Quorum     int

	// OnBrokerLoss is what the node does while it has lost its broker:
	// FenceOnBrokerLoss (the default, also for "") or DegradeOnBrokerLoss.
	OnBrokerLoss BrokerLoss

	// DataDir is the node's own directory: the cluster settings
	// (Node.Settings) keep their copy there. Empty keeps them in memory
	// only (the node then gets them from the other nodes, or from the
	// broker where it retains, when it starts).
	DataDir string
}

// DefaultConfig returns the defaults: heartbeat 500ms, failure timeout
// 1.5s, clock skew threshold 2s, keep-majority, cluster "default".
func DefaultConfig() Config {
	return Config{
		Cluster:            "default",
		HeartbeatInterval:  500 * time.Millisecond,
		FailureTimeout:     1500 * time.Millisecond,
		ClockSkewThreshold: 2 * time.Second,
		SplitBrain:         KeepMajority,
	}
}

var (
	clusterRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$`)
	nodeIDRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
)

// Validate checks cfg and names the field and the rule that fails. Errors
// match adapters.ErrInvalidArgument.
func (c Config) Validate() error { return c.ValidateNamed(nil) }

// ValidateNamed is Validate with the settings named by name(field) (such
// as "failure-timeout" for "FailureTimeout"), so that a program reading its
// own configuration keys reports the key its user typed; a nil name, or
// one that returns "", keeps the Go field name.
func (c Config) ValidateNamed(name func(field string) string) error {
	f := func(field string) string {
		if name != nil {
			if n := name(field); n != "" {
				return n
			}
		}
		return field
	}
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf(format, a...))
	}
	if !clusterRE.MatchString(c.Cluster) {
		bad("%s %q: want 1-40 letters, digits, '-' or '_', starting with a letter or digit", f("Cluster"), c.Cluster)
	}
	if c.NodeID != "" && !nodeIDRE.MatchString(c.NodeID) {
		bad("%s %q: want 1-64 letters, digits, '.', '-' or '_', starting with a letter or digit", f("NodeID"), c.NodeID)
	}
	if c.HeartbeatInterval <= 0 {
		bad("%s (%s) must be more than 0", f("HeartbeatInterval"), c.HeartbeatInterval)
	}
	if c.FailureTimeout <= 2*c.HeartbeatInterval {
		bad("%s (%s) must be more than 2 × %s (%s)", f("FailureTimeout"), c.FailureTimeout, f("HeartbeatInterval"), c.HeartbeatInterval)
	}
	if c.ForgetAfter != 0 && c.ForgetAfter < c.FailureTimeout {
		bad("%s (%s) must be 0 (default) or at least %s (%s)", f("ForgetAfter"), c.ForgetAfter, f("FailureTimeout"), c.FailureTimeout)
	}
	if c.ClockSkewThreshold <= 0 {
		bad("%s (%s) must be more than 0", f("ClockSkewThreshold"), c.ClockSkewThreshold)
	}
	switch c.SplitBrain {
	case KeepMajority, KeepOldest, SplitBrainOff:
		if c.Quorum != 0 {
			bad("%s (%d) is only used with %s %q; got %q", f("Quorum"), c.Quorum, f("SplitBrain"), StaticQuorum, c.SplitBrain)
		}
	case StaticQuorum:
		if c.Quorum < 1 {
			bad("%s (%d) must be at least 1 with %s %q", f("Quorum"), c.Quorum, f("SplitBrain"), StaticQuorum)
		}
	default:
		bad("%s %q: want one of %s, %s, %s, %s", f("SplitBrain"), c.SplitBrain, KeepMajority, KeepOldest, StaticQuorum, SplitBrainOff)
	}
	switch c.OnBrokerLoss {
	case "", FenceOnBrokerLoss, DegradeOnBrokerLoss:
	default:
		bad("%s %q: want %s or %s", f("OnBrokerLoss"), c.OnBrokerLoss, FenceOnBrokerLoss, DegradeOnBrokerLoss)
	}
	if err := errors.Join(errs...); err != nil {
		return &adapters.Error{Code: adapters.ErrInvalidArgument, Op: "bus: config", Err: err}
	}
	return nil
}

// ValidateNodeID checks a node ID: 1-64 letters, digits, '.', '-' or '_',
// starting with a letter or digit.
func ValidateNodeID(id string) error {
	if !nodeIDRE.MatchString(id) {
		return adapters.Errorf(adapters.ErrInvalidArgument, "bus: config",
			"node ID %q: want 1-64 letters, digits, '.', '-' or '_', starting with a letter or digit", id)
	}
	return nil
}

// ParseSplitBrain parses "keep-majority", "keep-oldest", "off",
// "static-quorum" or "static-quorum:N" (also "static-quorum(N)").
func ParseSplitBrain(s string) (SplitBrain, int, error) {
	s = strings.TrimSpace(strings.ToLower(s))
	switch SplitBrain(s) {
	case KeepMajority, KeepOldest, SplitBrainOff, StaticQuorum:
		return SplitBrain(s), 0, nil
	case "":
		return KeepMajority, 0, nil
	}
	if rest, ok := strings.CutPrefix(s, string(StaticQuorum)); ok {
		rest = strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(rest, ":"), "("), ")")
		n, err := strconv.Atoi(rest)
		if err == nil && n >= 1 {
			return StaticQuorum, n, nil
		}
	}
	return "", 0, adapters.Errorf(adapters.ErrInvalidArgument, "bus: config",
		"split-brain policy %q: want keep-majority, keep-oldest, off or static-quorum:N", s)
}

func (c Config) forgetAfter() time.Duration {
	if c.ForgetAfter > 0 {
		return c.ForgetAfter
	}
	return 20 * c.FailureTimeout
}

// detectHost fills Host and IP when empty.
func (c *Config) detectHost() {
	if c.Host == "" {
		c.Host, _ = os.Hostname()
	}
	if c.IP == "" {
		c.IP = outboundIP()
	}
}

// outboundIP picks the address the host would use to reach the outside
// (no packet is sent), falling back to the first non-loopback address.
func outboundIP() string {
	if conn, err := net.Dial("udp", "192.0.2.1:9"); err == nil {
		defer conn.Close()
		if a, ok := conn.LocalAddr().(*net.UDPAddr); ok && !a.IP.IsUnspecified() {
			return a.IP.String()
		}
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	return "127.0.0.1"
}
