package main

// The binary links every adapter, so --broker accepts every scheme. A
// library user imports only the adapters they need.
import (
	_ "github.com/clusterbus/clusterbus/adapters/azservicebus"
	_ "github.com/clusterbus/clusterbus/adapters/kafka"
	_ "github.com/clusterbus/clusterbus/adapters/mem"
	_ "github.com/clusterbus/clusterbus/adapters/nats"
	_ "github.com/clusterbus/clusterbus/adapters/rabbitmq"
	_ "github.com/clusterbus/clusterbus/adapters/sqs"
)
