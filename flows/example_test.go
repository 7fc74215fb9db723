package flows_test

import (
	"context"
	"fmt"
	"time"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/flows"
)

func ExampleRule() {
	r := &flows.Rule{
		Name: "risk",
		Conditions: []flows.Condition{
			{When: []string{"input.amount > 1000", `input.country != "NL"`}, Outcome: "review"},
			{When: []string{"input.amount > 1000"}, Outcome: "check"},
		},
		Default: "accept",
	}
	for _, in := range []map[string]any{
		{"amount": 5000, "country": "US"},
		{"amount": 5000, "country": "NL"},
		{"amount": 10.5, "country": "US"},
	} {
		out, err := r.Evaluate(context.Background(), in, nil)
		fmt.Println(out, err)
	}
	// Output:
	// review <nil>
	// check <nil>
	// accept <nil>
}

func ExampleEngine() {
	b := mem.New() // any adapters.Broker; every node runs an Engine on it
	defer b.Close()
	e, _ := flows.New(b, flows.Config{Queue: "example-flows", Lease: 5 * time.Second}, flows.Options{NodeID: "node-1"})
	defs, err := flows.Parse("greet.yaml", []byte(`
flow: greet
steps:
  - name: shout
    set: {greeting: "'HELLO ' + input.name"}
  - name: size
    rule:
      conditions:
        - when: size(vars.greeting) > 10
          outcome: long
      default: short
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	e.Register(defs.Flows[0])
	e.Start(context.Background())
	defer e.Stop(context.Background())

	id, _ := e.Submit(context.Background(), "greet", map[string]any{"name": "clusterbus"})
	for {
		st, err := e.Status(context.Background(), id)
		if err == nil && st.State != flows.StateRunning {
			fmt.Println(st.State, st.Output["greeting"], st.Output["size"])
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Output: completed HELLO clusterbus long
}
