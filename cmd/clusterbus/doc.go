// Command clusterbus runs a clusterbus node, its embedded broker, and the CLI
// that talks to them.
//
//	clusterbus node     join a cluster (embedded NATS when --broker is empty); serves
//	                    /ha/health, /api/cluster, /api/flows, /api/settings, /metrics and the console (/)
//	clusterbus broker   run the embedded NATS server (JetStream) for several nodes
//	clusterbus check    round-trip a topic message and a queue item on a broker URL
//	clusterbus bench    measure queue throughput and latency, and topic latency, on a broker URL
//	clusterbus status   print the cluster as a node sees it (-o json|yaml, --watch)
//	clusterbus cache    broadcast cache-clear events
//	clusterbus flow     submit flow executions, ask where they are, list them (flow list),
//	                    check definitions without a node (flow lint DIR), deploy
//	                    definitions to the cluster (flow deploy|versions|rollback|undeploy),
//	                    control executions from any node (flow list --status --flow --since,
//	                    flow history|cancel|retry ID, flow signal ID NAME --data JSON)
//	clusterbus config   print the merged node configuration with each value's source
//	                    (config print), or validate it (config check); exit 2 on errors;
//	                    set, get, list and unset the cluster settings through a node
//	                    (config set KEY VALUE | get KEY | list | unset KEY, --addr)
//	clusterbus cluster  down an unreachable member by hand (cluster down NODE)
//	clusterbus queue    replay a queue's dead letters onto it
//	clusterbus version  (also clusterbus --version)
//
// Every subcommand lives in its own file and adds itself to rootCmd from an
// init function. The binary links every adapter (adapters.go), so --broker
// accepts every scheme. See README.md.
package main
