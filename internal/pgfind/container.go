package pgfind

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/modules/postgres"
)

// ImageEnvVar names the environment variable that selects the container
// image, for example "postgres:17-alpine".
const ImageEnvVar = "PGGUARD_TEST_POSTGRES_IMAGE"

// DefaultImage is the container image used when [ImageEnvVar] is unset.
const DefaultImage = "postgres:16-alpine"

// Credentials of the container. The container listens on a random host port
// and is removed with the test process, so fixed values are safe.
const (
	containerUser     = "postgres"
	containerPassword = "postgres"
	containerDatabase = "postgres"
)

// dockerSocketPath is the default Docker socket. Tests replace it.
var dockerSocketPath = "/var/run/docker.sock"

func containerImage() string {
	if image := os.Getenv(ImageEnvVar); image != "" {
		return image
	}
	return DefaultImage
}

// dockerConfigured reports whether a Docker engine is configured, from
// DOCKER_HOST and the default socket only, without network traffic. The
// returned text describes what was found.
//
// NOTE: testcontainers-go v0.45.0 also finds a Docker host through
// ~/.testcontainers.properties, the current Docker context and rootless
// sockets such as ~/.docker/run/docker.sock. Find skips the container in
// those set-ups unless DOCKER_HOST points at the engine or
// /var/run/docker.sock links to it.
func dockerConfigured() (bool, string) {
	if host := os.Getenv("DOCKER_HOST"); host != "" {
		return true, "DOCKER_HOST is " + host
	}
	if _, err := os.Stat(dockerSocketPath); err == nil {
		return true, dockerSocketPath + " exists"
	}
	return false, "DOCKER_HOST is not set and " + dockerSocketPath + " does not exist"
}

// findContainer starts a PostgreSQL container when Docker is configured. It
// returns either the server or a report of why there is none.
func findContainer(ctx context.Context) (*Server, string) {
	ok, found := dockerConfigured()
	if !ok {
		return nil, found
	}

	image := containerImage()
	ctr, err := postgres.Run(ctx, image,
		postgres.WithDatabase(containerDatabase),
		postgres.WithUsername(containerUser),
		postgres.WithPassword(containerPassword),
		postgres.BasicWaitStrategies(),
	)
	if err != nil {
		// Run can return a container together with an error, for example
		// when the wait strategy times out, so remove it.
		if termErr := terminateContainer(context.WithoutCancel(ctx), ctr); termErr != nil {
			err = errors.Join(err, termErr)
		}
		return nil, fmt.Sprintf("%s, but starting a %s container failed: %v", found, image, err)
	}

	rawURL, err := ctr.ConnectionString(ctx, "sslmode=disable")
	if err == nil {
		err = probe(ctx, rawURL)
	}
	if err != nil {
		if termErr := terminateContainer(context.WithoutCancel(ctx), ctr); termErr != nil {
			err = errors.Join(err, termErr)
		}
		return nil, fmt.Sprintf("%s and a %s container started, but connecting to it failed: %v", found, image, err)
	}

	endpoint, err := ctr.PortEndpoint(ctx, "5432/tcp", "")
	if err != nil {
		endpoint = "unknown address"
	}
	return &Server{
		URL:       rawURL,
		Method:    MethodContainer,
		Source:    fmt.Sprintf("testcontainers %s container at %s", image, endpoint),
		container: ctr,
	}, ""
}

// terminateContainer stops and removes ctr. A nil ctr is a no-op.
func terminateContainer(ctx context.Context, ctr *postgres.PostgresContainer) error {
	if ctr == nil {
		return nil
	}
	if err := testcontainers.TerminateContainer(ctr, testcontainers.StopContext(ctx)); err != nil {
		return fmt.Errorf("pgfind: failed to remove the PostgreSQL container: %w", err)
	}
	return nil
}
