package flows

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/catalog"
)

// DeployRequest is the body of POST /api/flow-definitions.
type DeployRequest struct {
	// YAML is the source: one or more flow documents.
	YAML string `json:"yaml"`
	// File names the source in messages.
	File string `json:"file,omitempty"`
}

// DeployResponse is the answer to POST /api/flow-definitions.
type DeployResponse struct {
	Deployed []Deployment `json:"deployed"`
}

// RollbackRequest is the body of POST /api/flow-definitions/{name}/rollback.
type RollbackRequest struct {
	Version int `json:"version"`
}

// definitionRoutes adds the deployed definitions' API (mutations are
// admin-authenticated by the node's guard, like every POST):
//
//	POST /api/flow-definitions                 {"yaml": "...", "file": "x.yaml"} -> {"deployed": [...]}
//	GET  /api/flow-definitions                 every deployed flow with its versions
//	GET  /api/flow-definitions/{name}          the flow's versions (FlowVersions)
//	GET  /api/flow-definitions/{name}/{version} the version's YAML
//	POST /api/flow-definitions/{name}/rollback {"version": N}
//	POST /api/flow-definitions/{name}/undeploy {}
//
// A conflict (another version with that number and other content) answers
// 409; when some flows of a source were deployed and others not, the error
// body also lists what was deployed.
func (e *Engine) definitionRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/flow-definitions", func(w http.ResponseWriter, r *http.Request) {
		var req DeployRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 4<<20)).Decode(&req); err != nil {
			writeDefError(w, adapters.Errorf(adapters.ErrInvalidArgument, "flows: deploy", "body: %v", err))
			return
		}
		opts := []DeployOption{}
		if req.File != "" {
			opts = append(opts, DeployFrom(req.File))
		}
		ds, err := e.Deploy(r.Context(), []byte(req.YAML), opts...)
		if err != nil && len(ds) > 0 {
			// Some flows of the source were deployed, others not.
			code := http.StatusInternalServerError
			if errors.Is(err, catalog.ErrConflict) {
				code = http.StatusConflict
			}
			writeJSON(w, code, map[string]any{"error": err.Error(), "deployed": ds})
			return
		}
		if err != nil {
			writeDefError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, DeployResponse{Deployed: nonNil(ds)})
	})
	mux.HandleFunc("GET /api/flow-definitions", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"flows": nonNil(e.Deployed())})
	})
	mux.HandleFunc("GET /api/flow-definitions/{name}", func(w http.ResponseWriter, r *http.Request) {
		fv, err := e.Versions(r.PathValue("name"))
		if err != nil {
			writeDefError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, fv)
	})
	mux.HandleFunc("GET /api/flow-definitions/{name}/{version}", func(w http.ResponseWriter, r *http.Request) {
		v, err := strconv.Atoi(r.PathValue("version"))
		if err != nil {
			writeDefError(w, adapters.Errorf(adapters.ErrInvalidArgument, "flows: source", "version %q: want a number", r.PathValue("version")))
			return
		}
		src, err := e.Source(r.PathValue("name"), v)
		if err != nil {
			writeDefError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(src)
	})
	mux.HandleFunc("POST /api/flow-definitions/{name}/rollback", func(w http.ResponseWriter, r *http.Request) {
		var req RollbackRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<10)).Decode(&req); err != nil || req.Version < 1 {
			writeDefError(w, adapters.Errorf(adapters.ErrInvalidArgument, "flows: rollback", `body: want {"version": N} with N >= 1`))
			return
		}
		e.answerVersions(w, r.PathValue("name"), e.Rollback(r.Context(), r.PathValue("name"), req.Version))
	})
	mux.HandleFunc("POST /api/flow-definitions/{name}/undeploy", func(w http.ResponseWriter, r *http.Request) {
		e.answerVersions(w, r.PathValue("name"), e.Undeploy(r.Context(), r.PathValue("name")))
	})
}

// answerVersions answers a rollback or undeploy: its error, else the
// flow's versions as they stand after it.
func (e *Engine) answerVersions(w http.ResponseWriter, name string, err error) {
	if err != nil {
		writeDefError(w, err)
		return
	}
	fv, err := e.Versions(name)
	if err != nil {
		writeDefError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, fv)
}

func writeDefError(w http.ResponseWriter, err error) {
	if errors.Is(err, catalog.ErrConflict) {
		writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
		return
	}
	writeError(w, err)
}
