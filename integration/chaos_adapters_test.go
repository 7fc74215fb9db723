package integration

// The chaos test reads the completion records itself, so it links every
// adapter the binary links: CLUSTERBUS_INTEGRATION_BROKER may name any of
// them.
import (
	_ "github.com/clusterbus/clusterbus/adapters/azservicebus"
	_ "github.com/clusterbus/clusterbus/adapters/kafka"
	_ "github.com/clusterbus/clusterbus/adapters/nats"
	_ "github.com/clusterbus/clusterbus/adapters/rabbitmq"
	_ "github.com/clusterbus/clusterbus/adapters/sqs"
)
