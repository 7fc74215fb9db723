// Package queuestats watches the counts of a node's queues through the
// broker's optional adapters.QueueStatter and exports them as
// clusterbus_queue_depth{queue}, clusterbus_queue_in_flight{queue},
// clusterbus_queue_dead_letters{queue} and
// clusterbus_queue_oldest_age_seconds{queue}.
//
// Every series of a watched queue exists from Watch, at zero; a count the
// broker cannot tell (adapters.Unknown, or a broker without QueueStats) is
// exported as NaN, which Prometheus and Grafana show as "no value" rather
// than a wrong zero. The console reads Snapshot, which says why a count is
// missing.
package queuestats
