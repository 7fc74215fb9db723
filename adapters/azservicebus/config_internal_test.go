package azservicebus

import (
	"testing"
	"time"
)

func TestISODurationRoundTripsAndReadsServiceBusForms(t *testing.T) {
	for _, d := range []time.Duration{5 * time.Second, 1500 * time.Millisecond, 5 * time.Minute, 7 * 24 * time.Hour} {
		got, err := parseISODuration(isoDuration(d))
		if err != nil || got != d {
			t.Errorf("parseISODuration(isoDuration(%s) = %q) = %s, %v", d, isoDuration(d), got, err)
		}
	}
	for s, want := range map[string]time.Duration{
		"PT30S": 30 * time.Second, "PT1M": time.Minute, "PT1H30M": 90 * time.Minute, "P1D": 24 * time.Hour,
		"P10675199DT2H48M5.4775807S": time.Duration(1<<62 - 1), // Service Bus's "forever"
	} {
		got, err := parseISODuration(s)
		if err != nil || got != want {
			t.Errorf("parseISODuration(%q) = %s, %v; want %s", s, got, err, want)
		}
	}
	for _, bad := range []string{"", "30S", "PT5X", "PTS"} {
		if _, err := parseISODuration(bad); err == nil {
			t.Errorf("parseISODuration(%q) accepted", bad)
		}
	}
}
