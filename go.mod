module github.com/banger-dev/banger

go 1.26.8
