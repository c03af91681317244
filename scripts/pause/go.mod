module fleet.dispatch.dev/pause

go 1.26.0
